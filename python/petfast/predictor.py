"""Whole-body lesion segmentation with nnU-Net v2 models (petfast's own models use the same format).

:class:`Predictor` reproduces ``nnUNetPredictor`` (nnunetv2 2.2-2.8) step for step, with the work on
the GPU when there is one and the same code on the CPU otherwise:

1. Channels in dataset.json order, indexed (i, j, k) as nibabel gives them, are turned into nnU-Net's
   (z, y, x) order and the plans' ``transpose_forward``.
2. Crop to the nonzero region, normalise per channel, resize to the plans' spacing when the shape
   changes (cubic B-spline): :mod:`petfast.nnunet.preprocess`.
3. Sliding window (:func:`petfast.patches.sliding_window`): nnU-Net's tile positions and Gaussian,
   tiles batched, the mirrored copies of each tile (test-time augmentation over the checkpoint's
   mirror axes) in the same batch, every fold's network on each batch with the logits averaged
   (nnU-Net averages folds' logits too), float16 autocast on CUDA as nnU-Net (bfloat16 or float32
   on request), float32 accumulation (nnU-Net accumulates in float16).
4. Logits resized back (trilinear), argmax (ties to background), un-cropped, transposed back.

The results agree with nnU-Net's to within its float16 accumulation: identical tile positions,
probabilities within about 1e-3 and masks with Dice above 0.995 in the parity tests.
Region-based models (sigmoid outputs) and cascades are not supported.
"""
from __future__ import annotations

import functools
import itertools
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import _arrays, io
from .components import _finite, _spacing
from .nnunet import preprocess as pre
from .nnunet.model_folder import CHECKPOINT, available_folds, fold_name, load_checkpoint
from .nnunet.networks import build_network
from .nnunet.plans import Plans
from .patches import finalize, sliding_window

_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}
DEFAULT_MODEL = Path(__file__).parent / "models" / "default"


def _default_device() -> torch.device:
    from . import cuda_available

    return torch.device("cuda" if torch.cuda.is_available() and cuda_available() else "cpu")


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """True when this CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16, from /proc/cpuinfo's
    flags), where oneDNN's bfloat16 convolutions beat float32; elsewhere they are emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def _load_weights(net: torch.nn.Module, weights: dict, source: str) -> None:
    """Strict load of the keys the network has; extra heads (e.g. ``decoder.organ_seg_layers.*``) are
    ignored with a warning, missing or misshapen weights are an error naming the key."""
    own = net.state_dict()
    missing = [k for k in own if k not in weights]
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks {len(missing)} weights of the network the plans describe "
                         f"(first: {missing[0]}); do plans.json and the checkpoint belong together?")
    for k, v in own.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: weight {k} has shape {tuple(weights[k].shape)} in the checkpoint but "
                             f"{tuple(v.shape)} in the network built from plans.json and dataset.json "
                             "(input channels and labels must match the checkpoint)")
    extra = sorted(k for k in weights if k not in own)
    if extra:
        heads = sorted({".".join(k.split(".")[:2]) for k in extra})
        warnings.warn(f"{source}: ignored {len(extra)} checkpoint entries that the segmentation network does not "
                      f"use ({', '.join(heads)})", stacklevel=3)
    net.load_state_dict({k: weights[k] for k in own}, strict=True)


@dataclass
class Case:
    """One input case of :meth:`Predictor.predict_files`: its id and files (channel files in
    dataset.json order, or an autoPET study folder)."""

    id: str
    files: tuple
    study: Path | None = None


_CPU_VOXELS_PER_CALL = 2 * 48 * 80 * 80  # the CPU default batch: 2 tiles of the default model
_SETUP_FAILURES = 3  # the first this many cases all failing stops the run: the setup is wrong, not a study


class CasesFailed(RuntimeError):
    """Some cases of :meth:`Predictor.predict_files` could not be predicted (a corrupt or truncated
    file, grids that differ, NaN values, running out of memory, ...). The others were predicted and
    written; nothing was written for these. ``errors`` maps each case to its exception, ``rows``
    holds the timings of the cases predicted, ``stopped`` says that the run ended early because its
    first cases all failed."""

    def __init__(self, errors: dict, rows: list, total: int, stopped: bool = False):
        self.errors, self.rows, self.stopped = errors, rows, stopped
        listed = "; ".join(f"{case}: {type(e).__name__}: {e}" for case, e in list(errors.items())[:5])
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        if stopped:
            head = f"stopped after the first {len(errors)} cases all failed (of {total})"
        else:
            head = f"{len(errors)} of {total} cases failed and have no output; the other {len(rows)} were written"
        super().__init__(f"{head}: {listed}{more}")


class Predictor:
    """Segment whole-body PET/CT with one or several folds of an nnU-Net v2 model.

    Build it with :meth:`from_nnunet`. Options: ``device`` ('cuda' when petfast's CUDA kernels and a
    GPU are there, else 'cpu'); ``step`` (tile overlap: 0.5 = nnU-Net's default, larger is faster);
    ``tta`` (mirroring test-time augmentation over the checkpoint's axes, nnU-Net's default: 8x the
    work for 3 axes); ``batch_size`` (network passes per forward call, mirrored copies included;
    default 8 on CUDA; on the CPU as many as hold about 600k voxels, 2 to 32: 2 for the default
    model, 19 for 32^3 patches); ``precision`` ('auto' = float16 autocast on CUDA as nnU-Net;
    on the CPU bfloat16 autocast where the CPU computes bfloat16 natively (AMX or AVX512-BF16:
    about 1.5x faster, masks within a few voxels of float32), float32 elsewhere; or 'fp16',
    'bf16', 'fp32', which on CUDA also turns off TF32 convolutions; 'fp32' is nnU-Net's CPU path);
    ``progress`` (a bar per case).
    """

    def __init__(self, networks, plans, dataset_json: dict, configuration: str = "3d_fullres",
                 mirror_axes=(0, 1, 2), device=None, step: float = 0.5, tta: bool = True, batch_size: int | None = None,
                 precision: str = "auto", progress: bool = False):
        self.plans = plans if isinstance(plans, Plans) else Plans(plans)
        conf = self.plans.configuration(configuration)
        self.configuration = configuration
        self.dataset_json = dataset_json
        self.channel_names = [dataset_json["channel_names"][str(c)] for c in range(len(dataset_json["channel_names"]))]
        labels = dataset_json["labels"]
        if any(isinstance(v, (list, tuple)) for v in labels.values()):
            raise ValueError("region-based models (labels given as lists of regions) are not supported")
        self.num_classes = len(labels)
        self.patch_size = tuple(int(p) for p in conf["patch_size"])
        if len(self.patch_size) != 3:
            raise ValueError(f"configuration {configuration!r} is not 3-D (patch {self.patch_size})")
        self.spacing = tuple(float(s) for s in conf["spacing"])
        self.schemes = list(conf["normalization_schemes"])
        self.use_mask = list(conf.get("use_mask_for_norm", [False] * len(self.schemes)))
        raw = self.plans.raw
        self.intensity_properties = raw.get("foreground_intensity_properties_per_channel",
                                            raw.get("foreground_intensity_properties_by_modality", {}))
        self.transpose_forward = list(raw.get("transpose_forward", [0, 1, 2]))
        self.transpose_backward = list(raw.get("transpose_backward", [0, 1, 2]))
        if len(self.schemes) != len(self.channel_names):
            raise ValueError(f"the plans normalise {len(self.schemes)} channels but dataset.json names "
                             f"{len(self.channel_names)}")
        for fn in ("resampling_fn_data", "resampling_fn_probabilities"):
            if conf.get(fn, "resample_data_or_seg_to_shape") != "resample_data_or_seg_to_shape":
                raise ValueError(f"plans use {fn}={conf[fn]!r}; petfast reproduces resample_data_or_seg_to_shape only")
        self.device = torch.device(device) if device is not None else _default_device()
        if self.device.type == "cuda":
            from . import cuda_built

            if not cuda_built():
                raise ValueError("device 'cuda' needs petfast built with its CUDA kernels (nvcc at install time)")
            torch.backends.cudnn.benchmark = True
        # The faster layout per device, measured with the 'default' network: on an H200 NCDHW (1.12 s
        # for a whole-body sliding window, channels-last 1.92 s; bench/gpu/network_ab.py), on the
        # CPU channels-last (oneDNN: about 10 % faster).
        self.memory_format = torch.contiguous_format if self.device.type == "cuda" else torch.channels_last_3d
        self.networks = [net.to(self.device, memory_format=self.memory_format).eval() for net in networks]
        if not self.networks:
            raise ValueError("a Predictor needs at least one network")
        if not 0 < step <= 1:
            raise ValueError(f"step must be in (0, 1], got {step}")
        self.step = float(step)
        self.mirror_axes = tuple(mirror_axes) if (tta and mirror_axes) else ()
        if batch_size is None:
            # On the CPU, about 600k voxels per forward call (2 tiles of the default model): small
            # patches pay per-call overhead (a 32^3 network: 3.2 s at 2 tiles, 1.9 s at 19).
            per_call = round(_CPU_VOXELS_PER_CALL / math.prod(self.patch_size))
            batch_size = 8 if self.device.type == "cuda" else min(32, max(2, per_call))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else ("bf16" if native_bf16_cpu() else "fp32")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be 'auto', 'fp16', 'bf16' or 'fp32', got {precision!r}")
        self.precision = precision
        self.progress = progress
        self.timings: dict = {}

    @classmethod
    def from_nnunet(cls, model_dir, folds=(0,), checkpoint: str = CHECKPOINT, device=None, **options) -> "Predictor":
        """Load an nnU-Net v2 model folder (``plans.json``, ``dataset.json``, ``fold_K/<checkpoint>``).

        folds: fold numbers or 'all'; None takes every ``fold_K`` that has the checkpoint (as nnU-Net
        does). Several folds average their logits. Trainer name, configuration and mirror axes come
        from the first fold's checkpoint, as nnU-Net takes them. Other options: see the class.
        Checkpoints are pickles: load only trusted model folders.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: no such model folder")
        plans = Plans(model_dir / "plans.json")
        dataset_json = io.read_json(model_dir / "dataset.json")
        for key in ("channel_names", "labels"):
            if key not in dataset_json:
                raise ValueError(f"{model_dir / 'dataset.json'} has no {key!r}")
        found = available_folds(model_dir, checkpoint)
        if folds is None:
            folds = found
            if not folds:
                raise FileNotFoundError(f"{model_dir}: no fold_K folder holds {checkpoint}")
        if isinstance(folds, (int, str)):
            folds = (folds,)
        checkpoints = []
        for f in folds:
            path = model_dir / fold_name(f) / checkpoint
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (folds with {checkpoint}: "
                                        f"{', '.join(map(str, found)) or 'none'})")
            checkpoints.append((path, load_checkpoint(path)))
        first = checkpoints[0][1]
        configuration = first.get("init_args", {}).get("configuration", "3d_fullres")
        mirror_axes = first.get("inference_allowed_mirroring_axes")
        n_in = len(dataset_json["channel_names"])
        n_out = len(dataset_json["labels"])
        n_schemes = len(plans.configuration(configuration).get("normalization_schemes", []))
        if n_schemes != n_in:
            raise ValueError(f"{model_dir}: the plans normalise {n_schemes} channels but dataset.json names {n_in}")
        networks = []
        for path, ckpt in checkpoints:
            net = build_network(plans, configuration, n_in, n_out)
            _load_weights(net, ckpt["network_weights"], str(path))
            networks.append(net)
        return cls(networks, plans, dataset_json, configuration, mirror_axes, device=device, **options)

    @classmethod
    def default(cls, device=None, **options) -> "Predictor":
        """petfast's shipped default model: a small network trained on *synthetic* studies by
        ``scripts/train_default_model.py`` (CT + PET on a 4.07 x 4.07 x 6 mm grid; other grids are
        resampled). A demonstration of the pipeline; not for clinical use."""
        if not (DEFAULT_MODEL / "plans.json").is_file():
            raise FileNotFoundError(f"{DEFAULT_MODEL}: the default model is missing from this installation")
        return cls.from_nnunet(DEFAULT_MODEL, folds=(0,), device=device, **options)

    # --- one case, arrays in and out ----------------------------------------------------------------

    def predict(self, image, affine=None, *, spacing=None, probabilities: bool = False):
        """Segment one case.

        image: the channels in dataset.json order (autoPET: CT in HU, PET in SUV, on one grid),
        either a (C, I, J, K) array or a sequence of C (I, J, K) arrays; numpy arrays or torch
        tensors (CPU or CUDA), any dtype, indexed as nibabel's data (i, j, k). affine: the 4x4
        voxel-to-world matrix (mm), of which only the voxel sizes matter; or ``spacing``: voxel
        sizes in mm along (i, j, k).

        Returns the uint8 label map (I, J, K) (0 = background); with ``probabilities`` also the
        softmax (num_classes, I, J, K) float32. numpy in, numpy out; torch in, torch out on the
        input's device (the first channel's kind for a list). ``self.timings`` holds the seconds of each stage.
        """
        channels, kind, out_device = self._channels(image)
        sp_ijk = self._spacing(affine, spacing)
        timer = _Timer(self.device)
        with torch.inference_mode():
            data, sp, box, shape_before = self._preprocess(channels, sp_ijk)
            shape_cropped = tuple(data.shape[1:])
            target = pre.new_shape(shape_cropped, sp, self.spacing)
            if target != shape_cropped:
                self._check_resampled_size(data.shape[0], shape_cropped, target, sp)
                data = pre.resize_image(data, target, pre.separate_axis(sp, self.spacing))
            timer.lap("preprocess")
            need_logits = probabilities or target != shape_cropped
            result = self._sliding_window(data, need_logits)
            del data
            timer.lap("network")
            if need_logits:
                seg, logits = result
                axis = pre.separate_axis(self.spacing, sp)
                if not probabilities and logits.shape[0] == 2:
                    # Resizing is linear, so the argmax of two resized logits is the sign of the resized
                    # difference (ties to background either way): one channel to resize instead of two.
                    seg = finalize(pre.resize_logits(logits[1:] - logits[:1], shape_cropped, axis))
                else:
                    logits = pre.resize_logits(logits, shape_cropped, axis)
                    if target != shape_cropped:
                        seg = finalize(logits)
            else:
                seg = result
            full = torch.zeros(shape_before, dtype=torch.uint8, device=seg.device)
            full[box] = seg
            mask = self._to_ijk(full)
            probs = None
            if probabilities:
                p = torch.softmax(logits.float(), 0)
                pf = torch.zeros((p.shape[0], *shape_before), dtype=torch.float32, device=p.device)
                pf[0] = 1.0  # background outside the crop, as nnU-Net
                pf[(slice(None),) + box] = p
                probs = self._to_ijk(pf)
            timer.lap("export")
        self.timings = timer.laps
        mask = _deliver(mask, kind, out_device)
        return mask if probs is None else (mask, _deliver(probs, kind, out_device))

    def _channels(self, image):
        if isinstance(image, (list, tuple)):
            chans = list(image)
        else:
            if not (isinstance(image, np.ndarray) or _arrays._is_torch(image)):
                raise TypeError(f"image must be a numpy array, a torch tensor or a list of them, got {type(image).__name__}")
            if image.ndim != 4:
                raise ValueError(f"image must be (C, I, J, K) or a list of (I, J, K) channels, got shape {tuple(image.shape)}")
            chans = [image[c] for c in range(image.shape[0])]
        n = len(self.channel_names)
        if len(chans) != n:
            raise ValueError(f"the model takes {n} channels ({', '.join(self.channel_names)}), got {len(chans)}")
        kind = "torch" if _arrays._is_torch(chans[0]) else "numpy"  # results come back as the first channel's kind
        out_device = chans[0].device if kind == "torch" else None
        shapes = {tuple(c.shape) for c in chans}
        if len(shapes) != 1:
            raise ValueError(f"the channels must share one grid; got shapes {sorted(shapes)}")
        shape = shapes.pop()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"each channel must be a non-empty 3-D volume, got shape {shape}")
        out = []
        for c in chans:
            if not _arrays._is_torch(c):
                c = np.asarray(c)
                if c.dtype.kind not in "biuf":
                    raise TypeError(f"image dtype {c.dtype} is not numeric")
                c = _arrays.torch_view(c if c.dtype.isnative else c.astype(c.dtype.newbyteorder("=")))
            out.append(c)
        return out, kind, out_device

    @staticmethod
    def _spacing(affine, spacing) -> tuple:
        if (affine is None) == (spacing is None):
            raise ValueError("give the image's affine or its spacing (one of them)")
        if affine is not None:
            from .resample import _affine

            a = _affine(affine, "affine")
            sp = np.linalg.norm(a[:3, :3], axis=0)
        else:
            sp = spacing
        return tuple(float(s) for s in _spacing(sp))

    def _check_resampled_size(self, channels: int, shape, target, sp) -> None:
        """A clear error, before allocating, when the model's spacing would blow the image up beyond the
        host's memory, and a warning when it changes the voxel count beyond what scanners' grids and
        models' spacings make (the usual cause of both: a spacing or affine not in mm); without it, a
        spacing off by 10 means an hour of tiles, or a volume of a few voxels, and a mask of nothing."""
        what = (f"resampling the {'x'.join(map(str, shape))} image from spacing {_mm(sp)} mm to the model's "
                f"{_mm(self.spacing)} mm gives {'x'.join(map(str, target))} voxels")
        needed = (channels + self.num_classes) * math.prod(target) * 4  # float32 image and logits
        avail = _arrays._available_host_bytes()
        if avail is not None and needed > avail:
            raise _arrays.OutOfMemoryError(
                f"{what}: {needed / 2**30:.1f} GiB with the logits, more than the {avail / 2**30:.1f} GiB of "
                "memory available. Is the spacing (or the affine) in mm?")
        ratio = math.prod(target) / math.prod(shape)
        if not 1 / 64 <= ratio <= 16:  # autoPET's grids and common models' spacings: 1/8 to 4
            warnings.warn(f"{what}, {ratio:.3g} times as many. Is the spacing (or the affine) in mm?", stacklevel=3)

    def _preprocess(self, channels, sp_ijk):
        """float32 (C, *cropped) in nnU-Net's axis order, normalised; spacing, crop box, uncropped shape."""
        t = self.transpose_forward
        shape = tuple(channels[0].shape[::-1][a] for a in t)
        full = torch.empty((len(channels), *shape), dtype=torch.float32, device=self.device)
        for c, ch in enumerate(channels):
            x = ch.to(self.device, non_blocking=True).permute(2, 1, 0).permute(*t)  # (i,j,k) -> (z,y,x) -> plans' order
            full[c].copy_(x)
            if x.dtype.is_floating_point and not _finite(full[c]):  # contiguous here: faster
                raise ValueError(f"channel {c} ({self.channel_names[c]}) contains NaN or infinite values")
        sp = tuple(sp_ijk[::-1][a] for a in t)
        box = pre.nonzero_bbox(full)
        data = full if all(b.stop - b.start == n for b, n in zip(box, shape)) else full[(slice(None),) + box].contiguous()
        pre.normalize(data, self.schemes, self.use_mask, self.intensity_properties)
        return data, sp, box, shape

    def _to_ijk(self, x: torch.Tensor) -> torch.Tensor:
        """Undo transpose_forward and the (i,j,k) -> (z,y,x) turn on the last three axes."""
        lead = list(range(x.ndim - 3))
        x = x.permute(*lead, *[len(lead) + a for a in self.transpose_backward])
        return x.permute(*lead, *[len(lead) + a for a in (2, 1, 0)])

    # --- the network --------------------------------------------------------------------------------

    def _mirrors(self) -> list[tuple]:
        dims = [a + 2 for a in self.mirror_axes]
        return [()] + [c for r in range(1, len(dims) + 1) for c in itertools.combinations(dims, r)]

    def _forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Mean logits over folds and mirrored copies of a batch of tiles (float32)."""
        mirrors = self._mirrors()
        x = torch.cat([torch.flip(tiles, m) if m else tiles for m in mirrors]) if len(mirrors) > 1 else tiles
        x = x.contiguous(memory_format=self.memory_format)
        dtype = _PRECISIONS[self.precision]
        if dtype is not None:
            precision = torch.autocast(self.device.type, dtype=dtype)
        elif self.device.type == "cuda":  # fp32 means fp32: no TF32 convolutions (cuDNN's default)
            precision = torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=False)
        else:
            precision = nullcontext()
        total = None
        with precision:
            for net in self.networks:
                y = torch.cat([net(chunk).float() for chunk in x.split(self.batch_size)])
                total = y if total is None else total.add_(y)
        n = tiles.shape[0]
        out = None
        for i, m in enumerate(mirrors):
            part = total[i * n:(i + 1) * n]
            part = torch.flip(part, m) if m else part
            out = part.clone() if out is None else out.add_(part)
        return out.div_(len(mirrors) * len(self.networks))

    # Without autograd whoever calls it (as nnU-Net's predict_sliding_window_return_logits): the
    # benchmarks call this stage directly, and with gradients tracked the fused norm never runs.
    @torch.inference_mode()
    def _sliding_window(self, data: torch.Tensor, return_logits: bool):
        tiles_per_call = max(1, self.batch_size // len(self._mirrors()))
        kw = dict(patch_size=self.patch_size, num_outputs=self.num_classes, step=self.step, batch_size=tiles_per_call,
                  return_logits=return_logits, progress=self.progress)
        # Non-finite logits (float16 overflowing, or broken weights) would make an argmax of garbage.
        # Their sum, kept on the device as the batches go (no synchronisation) and read once at the end,
        # is finite exactly when they all are: one pass without a temporary (a count took 40x as long).
        total = torch.zeros((), dtype=torch.float64, device=data.device)

        def forward(t):
            y = self._forward(t)
            total.add_(y.sum())
            return y

        try:
            result = sliding_window(data, forward, **kw)
        except (torch.cuda.OutOfMemoryError, _arrays.OutOfMemoryError):
            if data.device.type != "cuda":
                raise
            warnings.warn("GPU memory ran out during the sliding window; retrying with the volume and its "
                          "accumulators in CPU memory (slower)", stacklevel=3)
            torch.cuda.empty_cache()
            device = data.device
            total.zero_()
            result = sliding_window(data.cpu(), lambda t: forward(t.to(device)).cpu(), **kw)
        if not math.isfinite(total.item()):
            warnings.warn(f"the network gave non-finite logits (NaN or infinite; precision {self.precision!r}), so "
                          "the mask is unreliable where they fell; predict with precision='fp32' (--precision fp32) "
                          "to tell float16 overflow from broken weights", stacklevel=3)
        return result

    # --- files in, files out ------------------------------------------------------------------------

    def find_cases(self, folder) -> list[Case]:
        """The cases in ``folder``: nnU-Net-style channel files (``CASE_0000.nii.gz``, ``CASE_0001...``),
        one autoPET study folder (``SUV.nii.gz`` with ``CTres.nii.gz`` or a raw ``CT.nii.gz``), or a
        folder of such study folders."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such input folder")
        ending = self.dataset_json.get("file_ending", ".nii.gz")
        if (folder / "SUV.nii.gz").is_file():
            return [self._study_case(folder)]
        ids = sorted(p.name[:-len("_0000" + ending)] for p in folder.glob(f"*_0000{ending}") if p.is_file())
        if ids:
            cases = []
            for cid in ids:
                files = tuple(folder / f"{cid}_{c:04d}{ending}" for c in range(len(self.channel_names)))
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise FileNotFoundError(f"{folder}: case {cid} lacks {', '.join(missing)} "
                                            f"(the model takes {', '.join(self.channel_names)})")
                cases.append(Case(cid, files))
            return cases
        studies = sorted(d for d in folder.iterdir() if d.is_dir() and (d / "SUV.nii.gz").is_file())
        if not studies:
            inner = [d.name for d in (folder / "imagesTs", folder / "imagesTr") if d.is_dir()]
            hint = f"; a dataset root? its images are in {' or '.join(inner)}" if inner else ""
            raise FileNotFoundError(f"{folder}: no cases (expected CASE_0000{ending} ... channel files, or autoPET "
                                    f"study folders with SUV.nii.gz and CTres.nii.gz or CT.nii.gz){hint}")
        return [self._study_case(d) for d in studies]

    def _study_case(self, folder: Path) -> Case:
        names = [n.lower() for n in self.channel_names]
        if sorted(names) != ["ct", "pet"]:
            raise ValueError(f"autoPET study folders give CT and PET; the model takes {', '.join(self.channel_names)}")
        ct = folder / "CTres.nii.gz" if (folder / "CTres.nii.gz").is_file() else folder / "CT.nii.gz"
        if not ct.is_file():
            raise FileNotFoundError(f"{folder}: neither CTres.nii.gz nor CT.nii.gz")
        files = tuple(ct if n == "ct" else folder / "SUV.nii.gz" for n in names)
        return Case(folder.name, files, study=folder)

    def _pet_channel(self) -> int | None:
        names = [n.lower() for n in self.channel_names]
        for key in ("pet", "suv"):
            if key in names:
                return names.index(key)
        return None

    def output_paths(self, case: Case, output, probabilities=False, lesions=None) -> dict:
        output = Path(output)
        paths = {"mask": output / f"{case.id}.nii.gz"}
        if probabilities:
            paths["probabilities"] = output / f"{case.id}_probabilities.nii.gz"
        if lesions:
            paths["lesions"] = output / f"{case.id}_lesions.{lesions}"
        return paths

    def predict_files(self, inputs, output, *, probabilities: bool = False, lesions: str | None = None,
                      overwrite: bool = False, skip_existing: bool = False, progress: bool = True) -> list[dict]:
        """Segment every case of ``inputs`` (see :meth:`find_cases`) into ``output``.

        Writes ``CASE.nii.gz`` (uint8 labels on the input grid, the first channel's header), with
        ``probabilities`` ``CASE_probabilities.nii.gz`` (float32, I x J x K x classes) and with
        ``lesions='csv'`` or ``'json'`` the lesion table of :func:`petfast.quant.lesions` on the
        PET channel. Each file is written atomically; existing outputs are an error unless
        ``overwrite``, checked before any work. ``skip_existing`` resumes an interrupted run (as
        nnU-Net's ``--continue_prediction``): cases whose outputs all exist are skipped, and a case
        with only some of them is predicted again and they are replaced. The next case is read while
        the current one runs. Returns one row of timings (seconds) per case predicted.

        A case that cannot be predicted (a corrupt file, grids that differ, NaN values, running out
        of memory) does not end the run: it gets a warning and no output, the other cases go on,
        and at the end :class:`CasesFailed` names every failed case and its error (``skip_existing``
        then retries just those). When the first 3 cases all fail the run stops there: the model
        or the input folder is wrong, not one study.
        """
        if lesions not in (None, "csv", "json"):
            raise ValueError(f"lesions must be None, 'csv' or 'json', got {lesions!r}")
        if lesions and self._pet_channel() is None:
            raise ValueError(f"a lesion table needs a PET channel; the model takes {', '.join(self.channel_names)}")
        output = Path(output)
        if output.name.endswith((".nii", ".nii.gz")) and not output.is_dir():
            raise ValueError(f"{output}: the output is a folder (one CASE.nii.gz per case), not a file name")
        cases = self.find_cases(inputs)
        if skip_existing:
            cases = [c for c in cases if not all(p.exists() for p in self.output_paths(c, output, probabilities,
                                                                                       lesions).values())]
            overwrite = True  # what remains of an interrupted case is replaced
        if not overwrite:
            clash = [p for c in cases for p in self.output_paths(c, output, probabilities, lesions).values() if p.exists()]
            if clash:
                raise FileExistsError(f"{len(clash)} output files exist (first: {clash[0]}); pass overwrite=True "
                                      "(--overwrite) to replace them, or skip_existing=True (--continue) to "
                                      "predict only the cases without them")
        output.mkdir(parents=True, exist_ok=True)
        rows = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(cases), desc="predict", unit="case")

        # The next cases are read while this one runs (io.load_ahead; on the CPU only the next: the
        # network takes far longer than reading, and each case further ahead holds ~0.4 GB more);
        # results are written in the background.
        failed = {}
        depth = None if self.device.type == "cuda" else 1
        try:
            with io.write_behind() as write:
                t0 = time.perf_counter()
                for case, pending in zip(cases, io.load_ahead((c.files for c in cases), depth=depth)):
                    try:
                        images = [f.result() for f in pending]
                        t_read = time.perf_counter() - t0
                        channels, ref = self._case_channels(case, images)
                        result = self.predict(channels, ref.affine, probabilities=probabilities)
                    except Exception as e:  # noqa: BLE001 - one bad study must not end a cohort run
                        failed[case.id] = e
                        warnings.warn(f"{case.id}: not predicted: {type(e).__name__}: {e}", stacklevel=2)
                        if not rows and len(failed) >= _SETUP_FAILURES:
                            raise CasesFailed(failed, rows, len(cases), stopped=True) from e
                        if bar is not None:
                            bar.update()
                        t0 = time.perf_counter()
                        continue
                    mask, probs = result if probabilities else (result, None)
                    mask = mask.cpu().numpy() if _arrays._is_torch(mask) else mask
                    probs = probs.cpu().numpy() if _arrays._is_torch(probs) else probs
                    pet = channels[self._pet_channel()] if lesions else None
                    pet = pet.cpu().numpy() if _arrays._is_torch(pet) else pet
                    paths = self.output_paths(case, output, probabilities, lesions)
                    write(_write_case, case.id, paths, mask, probs, pet, ref, overwrite)
                    row = {"case": case.id, "shape": "x".join(map(str, mask.shape)), "read_wait": t_read,
                           **self.timings, "total": time.perf_counter() - t0}
                    rows.append(row)
                    if bar is not None:
                        bar.set_postfix_str(f"{case.id}: {row['total']:.1f} s")
                        bar.update()
                    t0 = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()
        if failed:  # the first failure's traceback comes along as the cause
            raise CasesFailed(failed, rows, len(cases)) from next(iter(failed.values()))
        return rows

    def _case_channels(self, case: Case, images: list) -> tuple[list, io.NiftiImage]:
        """Channel arrays on one grid (a raw CT is resampled onto the PET grid on the device) and the
        image whose header the outputs copy."""
        from .data import _same_grid
        from .resample import resample_ct_to_pet

        ref = images[0]
        pet_index = self._pet_channel()
        if case.study is not None and case.files[1 - pet_index].name == "CT.nii.gz":
            ct, pet = images[1 - pet_index], images[pet_index]
            # On the CPU the kernel reads the CT in its NIfTI (Fortran) order: a C-ordered copy first
            # made this step take twice as long (2.2-2.6 s instead of 1.1-1.3 s for 512x512x489).
            ct_data = ct.data if self.device.type == "cpu" else _arrays.torch_view(ct.data).to(self.device)
            ct_data = resample_ct_to_pet(ct_data, ct.affine, pet.data.shape, pet.affine, order=3)
            chans = [None, None]
            chans[1 - pet_index], chans[pet_index] = ct_data, pet.data
            return chans, pet
        for img, path in zip(images[1:], case.files[1:]):
            _same_grid(img, ref, path, case.files[0])
        return [img.data for img in images], ref


def _mm(spacing) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in spacing) + ")"


class _Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.t = time.perf_counter()
        self.laps = {}

    def lap(self, name):
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[name] = now - self.t
        self.t = now


def _deliver(x: torch.Tensor, kind: str, device):
    if kind == "numpy":
        return x.cpu().numpy()
    return x.to(device)


def _write_case(case_id: str, paths: dict, mask, probs, pet, ref: io.NiftiImage, overwrite: bool) -> None:
    from .data import _write_csv, _write_json
    from .quant import LESION_COLUMNS, lesions

    try:
        io.save(paths["mask"], mask, like=ref, overwrite=overwrite)
        if probs is not None:
            io.save(paths["probabilities"], np.moveaxis(probs, 0, -1).astype(np.float32), like=ref, overwrite=overwrite)
        if "lesions" in paths:
            table = lesions(pet, mask != 0, ref.spacing)  # every foreground class counts as lesion
            if paths["lesions"].suffix == ".json":
                _write_json(paths["lesions"], table, overwrite)
            else:
                _write_csv(paths["lesions"], table["lesions"], overwrite, fields=LESION_COLUMNS)
    except OSError as e:  # a full disk or a missing permission fails every case after it too
        raise OSError(f"{case_id}: its outputs could not be written to {paths['mask'].parent} ({e}); the run "
                      "stops here. The cases before it are complete: fix the cause, then run again with "
                      "skip_existing=True (--continue)") from e
