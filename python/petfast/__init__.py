"""petfast: fast whole-body PET/CT lesion segmentation toolkit.

The public API is what this module exports; everything under a leading underscore is internal.
"""
from __future__ import annotations

import os as _os

from . import _C
from .components import component_stats, label, label_with_stats, remove_small
from .resample import resample, resample_ct_to_pet
from . import metrics, patches, quant  # noqa: E402  (submodules of the public API)

__version__ = "0.1.0"

__all__ = [
    "Predictor",
    "__version__",
    "component_stats",
    "cuda_available",
    "cuda_built",
    "get_num_threads",
    "label",
    "label_with_stats",
    "remove_small",
    "resample",
    "resample_ct_to_pet",
    "set_num_threads",
]


def cuda_built() -> bool:
    """True when this build of petfast contains the CUDA kernels (nvcc was found at build time)."""
    return bool(_C.cuda_built())


def cuda_available() -> bool:
    """True when the CUDA kernels were built and at least one CUDA device is usable."""
    return cuda_built() and _C.cuda_device_count() > 0


def get_num_threads() -> int:
    """Number of CPU threads petfast's CPU kernels use."""
    return int(_C.get_num_threads())


def set_num_threads(n: int) -> None:
    """Set the number of CPU threads for petfast's CPU kernels (default: the cores this process may use).

    Like ``torch.set_num_threads``; when petfast and torch run side by side, split the cores between them.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    _C.set_num_threads(n)


def _default_threads() -> int:
    try:
        return max(1, len(_os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, _os.cpu_count() or 1)


_C.set_num_threads(_default_threads())


def __getattr__(name):  # torch is imported only when the Predictor is used
    if name == "Predictor":
        try:
            from .predictor import Predictor
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise ImportError("petfast.Predictor needs torch, which is not installed (pip install torch); "
                              "the rest of petfast works on numpy arrays without it") from e
        return Predictor
    raise AttributeError(f"module 'petfast' has no attribute {name!r}")
