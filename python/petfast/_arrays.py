"""numpy / torch (CPU, CUDA) arrays to the kernels' (pointer, dtype, shape, strides, device) tuples.

The Python layer owns all memory: inputs are viewed in place (any strides, C or Fortran order) and
copied only when a kernel cannot read them (foreign byte order, misaligned data); outputs and scratch
are allocated here with numpy or with torch on the input's device, so torch's caching allocator is
reused. torch is optional and imported only when a tensor is passed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _C

# dtype -> code understood by csrc/petfast/array.h
_CODES = {np.dtype(np.uint8): 0, np.dtype(np.int16): 1, np.dtype(np.int32): 2,
          np.dtype(np.float32): 3, np.dtype(np.float64): 4}
SUPPORTED = "uint8, int16, int32, float32, float64"
_CHECKED_BYTES = 64 * 2**20


class OutOfMemoryError(ValueError, MemoryError):
    """An output or scratch buffer does not fit in the memory of its device."""


@dataclass
class Array:
    """A kernel-ready view of a user's array; `obj` keeps the memory alive."""

    obj: Any
    kind: str  # "numpy" or "torch"
    dtype: np.dtype
    shape: tuple
    strides: tuple  # in elements
    ptr: int
    device: int  # -1 for host memory, else the CUDA ordinal

    def spec(self) -> tuple:
        return (self.ptr, _CODES[self.dtype], self.shape, self.strides, self.device)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def on_cuda(self) -> bool:
        return self.device >= 0

    def stream(self) -> int:
        """Torch's current stream on this array's device (0, the legacy default, on the CPU)."""
        if not self.on_cuda:
            return 0
        import torch

        return int(torch.cuda.current_stream(self.device).cuda_stream)


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def adapt(x, name: str) -> Array:
    """View `x` (numpy array, array-like or torch tensor) for the kernels; TypeError if it cannot be."""
    if _is_torch(x):
        return _adapt_torch(x, name)
    if hasattr(x, "get_fdata") and hasattr(x, "affine"):
        raise TypeError(f"{name}: got a nibabel image; pass np.asanyarray(img.dataobj) and img.affine")
    if hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{name}: CUDA arrays other than torch tensors are not supported; "
                        "wrap it with torch.as_tensor(x, device='cuda')")
    a = np.asanyarray(x)
    if a.dtype.kind == "O":
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}")
    base = a.dtype.newbyteorder("=")
    if base not in _CODES:
        raise TypeError(f"{name}: dtype {a.dtype} is not supported (supported: {SUPPORTED}); "
                        "convert it first, e.g. x.astype(np.float32)")
    if a.dtype != base or not a.flags.aligned or any(s % a.itemsize for s in a.strides):
        a = a.astype(base, order="K")  # the only copies: byte order or alignment the kernels cannot read
    return Array(a, "numpy", base, tuple(a.shape), tuple(s // a.itemsize for s in a.strides),
                 a.ctypes.data, -1)


def adapt_inplace(x, name: str) -> Array:
    """adapt() for an array a kernel writes into: it must be writable and taken as it is. adapt()'s
    silent copies (byte order, alignment) would take the results with them, and a broadcast view
    would have every write land on the same few elements."""
    if not _is_torch(x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} is written in place: pass a numpy array or a torch tensor, not {type(x).__name__}")
        if not x.flags.writeable:
            raise ValueError(f"{name} is read-only, and it is written in place")
    a = adapt(x, name)
    if (a.ptr != x.data_ptr()) if _is_torch(x) else (a.obj is not x):  # adapt() made a copy
        raise TypeError(f"{name} is written in place, so it must be aligned, in native byte order and of a "
                        f"supported dtype ({SUPPORTED}); got {x.dtype}")
    if any(st == 0 and n > 1 for st, n in zip(a.strides, a.shape)):
        raise ValueError(f"{name} is a broadcast view (several elements share memory); it is written in place")
    return a


_TORCH_DTYPES: dict = {}  # torch dtype <-> numpy dtype, both ways, filled on first use


def _torch_dtypes() -> dict:
    if not _TORCH_DTYPES:
        import torch

        for t, n in ((torch.uint8, np.uint8), (torch.int16, np.int16), (torch.int32, np.int32),
                     (torch.float32, np.float32), (torch.float64, np.float64)):
            _TORCH_DTYPES[t] = np.dtype(n)
            _TORCH_DTYPES[np.dtype(n)] = t
    return _TORCH_DTYPES


def _adapt_torch(t, name: str) -> Array:
    import torch

    codes = _torch_dtypes()
    if t.dtype not in codes:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported (supported: {SUPPORTED}); "
                        "convert it first, e.g. x.float()")
    if t.device.type == "cuda":
        if not _C.cuda_built():
            raise TypeError(f"{name} is a CUDA tensor but petfast was built without CUDA kernels; "
                            "pass x.cpu() or install a CUDA build of petfast")
        device = t.get_device()  # a tensor's device always has its index
    elif t.device.type == "cpu":
        device = -1
    else:
        raise TypeError(f"{name}: tensors on {t.device.type} are not supported (use cpu or cuda)")
    if t.layout != torch.strided:
        raise TypeError(f"{name}: {t.layout} tensors are not supported; pass a dense one (x.to_dense())")
    t = t.detach()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return Array(t, "torch", codes[t.dtype], tuple(t.shape), tuple(t.stride()),
                 t.data_ptr(), device)


def torch_view(a: np.ndarray):
    """``torch.from_numpy(a)`` without torch's warning for read-only arrays (what petfast.io.load
    returns): petfast only reads them."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def c_order_on_cuda(a: Array) -> Array:
    """``a``, or for a non-contiguous CUDA tensor a C-ordered copy: the CUDA kernels walk (i, j, k)
    raster order, and a Fortran-ordered tensor (NIfTI data moved to the GPU as it is) would have each
    warp read 32 scattered sectors, where one contiguous copy costs a single pass. The CPU kernels
    walk any layout in its memory order."""
    return adapt(a.obj.contiguous(), "contiguous copy") if a.on_cuda and not a.obj.is_contiguous() else a


def whole3(values, name: str) -> tuple[int, int, int]:
    """``values`` as 3 ints (voxel indices or counts); whole-number floats are accepted, fractions
    are an error rather than truncated."""
    try:
        out = tuple(int(v) for v in values)
        whole = all(o == v for o, v in zip(out, values))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a sequence of 3 integers, got {values!r}") from e
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 axes, got {tuple(values)}")
    if not whole:
        raise ValueError(f"{name} must be whole numbers of voxels, got {tuple(values)}")
    return out


def shape3(values, name: str) -> tuple[int, int, int]:
    """``values`` as 3 positive ints (a shape or patch size); whole-number floats are accepted."""
    out = whole3(values, name)
    if min(out) < 1:
        raise ValueError(f"{name} must be 3 positive integers, got {out}")
    return out


def memory_order(a: Array) -> tuple:
    """The axes of `a` from largest to smallest stride (the order its memory walks them)."""
    return tuple(sorted(range(a.ndim), key=lambda ax: -abs(a.strides[ax])))


def _available_host_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def empty(like: Array, shape, dtype, *, axis_order=None, zeroed: bool = False) -> Array:
    """A new array of `like`'s kind and device, laid out with its axes in `axis_order` (outermost
    first; (0, 1, 2) is C order). By default numpy outputs follow a Fortran-ordered input's order (as
    nibabel gives them) and torch outputs are C-ordered."""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize

    def what():
        return f"an array of shape {shape} ({dtype}, {nbytes / 2**30:.2f} GiB)"

    # Linux overcommits: a too-large host array would be granted, then the process killed while
    # writing it. So large host allocations are checked against the memory actually available.
    if not like.on_cuda and nbytes > _CHECKED_BYTES:
        avail = _available_host_bytes()
        if avail is not None and nbytes > avail:
            raise OutOfMemoryError(f"{what()} does not fit in the {avail / 2**30:.2f} GiB of memory available")
    if axis_order is None:
        fortran = like.kind == "numpy" and like.obj.flags.f_contiguous and not like.obj.flags.c_contiguous
        axis_order = (2, 1, 0) if fortran and len(shape) == 3 else tuple(range(len(shape)))
    axis_order = tuple(axis_order)
    identity = axis_order == tuple(range(len(shape)))
    inverse = axis_order if identity else tuple(int(a) for a in np.argsort(axis_order))
    stored = tuple(shape[a] for a in axis_order)
    try:
        if like.kind == "numpy":  # np.zeros maps fresh zero pages: untouched parts cost nothing
            new = (np.zeros if zeroed else np.empty)(stored, dtype)
            return adapt(new if identity else new.transpose(inverse), "output")
        import torch

        device = torch.device("cuda", like.device) if like.on_cuda else torch.device("cpu")
        new = (torch.zeros if zeroed else torch.empty)(stored, dtype=_torch_dtypes()[dtype], device=device)
        return adapt(new if identity else new.permute(*inverse), "output")
    except MemoryError as e:
        raise OutOfMemoryError(f"{what()} does not fit in memory") from e
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
        if "out of memory" in str(e).lower():
            raise OutOfMemoryError(f"{what()} does not fit in the memory of cuda:{like.device}") from e
        raise

