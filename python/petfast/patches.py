"""Sliding-window tiles for inference, with nnU-Net v2's semantics.

* :func:`tile_steps` gives the tile start positions per axis exactly as nnU-Net's
  ``compute_steps_for_sliding_window``: ``ceil((size - patch) / (patch * step)) + 1`` tiles spread
  evenly and rounded. Images smaller than the patch are first padded to the patch size, half
  before and half (plus one) after, as nnU-Net's ``pad_nd_image``; see :func:`pad_to_patch`.
* :func:`gaussian_importance_map` is nnU-Net's ``compute_gaussian``: a Gaussian with sigma =
  patch / 8 (truncated at 4 sigma), peak scaled to 10, zeros (after the cast) replaced by the
  smallest positive value. Identical in float32; in float16 an entry can be one unit apart.
* :func:`gather_tiles`, :func:`accumulate_tiles` and :func:`finalize` are the fused kernels
  (CPU and CUDA) of the stitching loop; :func:`sliding_window` runs the whole loop around a
  predictor. Volumes are channel-first (C, D, H, W), tiles (B, C, d, h, w); origins are the voxel
  index of each tile's first voxel. Accumulation is in float32 (nnU-Net accumulates in float16).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from . import _C, _arrays


def padded_shape(image_shape, patch_size) -> tuple:
    """The image shape after padding to at least the patch size."""
    image, patch = _arrays.shape3(image_shape, "image_shape"), _arrays.shape3(patch_size, "patch_size")
    return tuple(max(s, p) for s, p in zip(image, patch))


def tile_steps(image_shape, patch_size, step: float = 0.5) -> list[list[int]]:
    """Tile start positions per axis, identical to nnU-Net's ``compute_steps_for_sliding_window``
    on the image padded to at least ``patch_size`` (see :func:`padded_shape`)."""
    patch = _arrays.shape3(patch_size, "patch_size")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    shape = padded_shape(image_shape, patch)
    steps = []
    for size, p in zip(shape, patch):
        n = int(math.ceil((size - p) / (p * step))) + 1
        stride = (size - p) / (n - 1) if n > 1 else 0.0
        steps.append([int(np.round(stride * i)) for i in range(n)])
    return steps


def tile_origins(image_shape, patch_size, step: float = 0.5) -> list[tuple[int, int, int]]:
    """All tile origins in nnU-Net's order (the last axis fastest)."""
    return list(itertools.product(*tile_steps(image_shape, patch_size, step)))


def pad_amounts(image_shape, patch_size) -> list[tuple[int, int]]:
    """(before, after) padding per axis that brings the image to at least the patch size, split as
    nnU-Net's ``pad_nd_image`` splits it."""
    out = []
    for size, p in zip(image_shape, _arrays.shape3(patch_size, "patch_size")):
        diff = max(p - int(size), 0)
        out.append((diff // 2, diff // 2 + diff % 2))
    return out


def gaussian_importance_map(patch_size, sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0,
                            dtype=np.float32) -> np.ndarray:
    """nnU-Net's Gaussian importance map (``compute_gaussian``) as a numpy array of ``dtype``."""
    patch = _arrays.shape3(patch_size, "patch_size")
    if not (sigma_scale > 0 and value_scaling_factor > 0):
        raise ValueError(f"sigma_scale and value_scaling_factor must be positive, got {sigma_scale}, "
                         f"{value_scaling_factor}")
    axes = []
    for p in patch:
        sigma = p * sigma_scale
        radius = int(4.0 * sigma + 0.5)  # scipy's gaussian_filter truncation
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        k = np.exp(-0.5 / sigma**2 * x**2)
        k /= k.sum()
        line = np.zeros(p)
        centre = p // 2
        for i in range(p):
            if abs(i - centre) <= radius:
                line[i] = k[i - centre + radius]
        axes.append(line)
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g /= g.max() / value_scaling_factor
    g = g.astype(dtype)
    if np.any(g == 0):
        g[g == 0] = g[g > 0].min()
    return g


def _origins(origins) -> list:
    """Origins as lists of 3 ints (what the kernels take)."""
    return [list(_arrays.whole3(o, "each origin (D, H, W)")) for o in origins]


_MAX_TILES = 128  # tiles per launch: kMaxTiles in csrc/petfast/array.h


def _launches(tiles: _arrays.Array, origins):
    """(tiles, origins) per kernel launch: the whole batch when it fits in one."""
    if len(origins) <= _MAX_TILES:
        yield tiles, origins
        return
    for i in range(0, len(origins), _MAX_TILES):
        yield _arrays.adapt(tiles.obj[i:i + _MAX_TILES], "tiles"), origins[i:i + _MAX_TILES]


def _view4(volume, name):
    a = _arrays.adapt(volume, name)
    if a.ndim != 4:
        raise ValueError(f"{name} must be channel-first (C, D, H, W), got shape {a.shape}")
    return a


def gather_tiles(volume, origins, patch_size, pad: float = 0.0, dtype=np.float32):
    """Tiles of ``volume`` (C, D, H, W) at ``origins`` into a contiguous (B, C, d, h, w) batch of
    ``dtype`` (float32 or the volume's dtype), ``pad`` where a tile reaches outside the volume
    (training patches may). Same kind and device as the volume."""
    src = _view4(volume, "volume")
    patch = _arrays.shape3(patch_size, "patch_size")
    origins = _origins(origins)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), src.dtype):
        raise TypeError(f"tiles are float32 or the volume's dtype {src.dtype}, not {dtype}")
    out = _arrays.empty(src, (len(origins), src.shape[0]) + patch, dtype, axis_order=(0, 1, 2, 3, 4))
    stream = src.stream()
    for part, chunk in _launches(out, origins):
        _C.gather_tiles(src.spec(), part.spec(), chunk, float(pad), stream)
    return out.obj


def accumulate_tiles(acc, weight, tiles, origins, weight_map) -> None:
    """In place: ``acc`` (C, D, H, W) += each tile x ``weight_map`` at its origin, and ``weight``
    (D, H, W) += ``weight_map``. All float32, one device; tiles (B, C, d, h, w) must lie inside."""
    a, w = _arrays.adapt_inplace(acc, "acc"), _arrays.adapt_inplace(weight, "weight")
    if a.ndim != 4:
        raise ValueError(f"acc must be channel-first (C, D, H, W), got shape {a.shape}")
    t, g = _arrays.adapt(tiles, "tiles"), _arrays.adapt(weight_map, "weight_map")
    if t.ndim != 5:
        raise ValueError(f"tiles must be (B, C, d, h, w), got shape {t.shape}")
    origins = _origins(origins)
    if len(origins) != t.shape[0]:
        raise ValueError(f"{len(origins)} origins for {t.shape[0]} tiles")
    stream = a.stream()
    for part, chunk in _launches(t, origins):
        _C.accumulate_tiles(part.spec(), g.spec(), chunk, a.spec(), w.spec(), stream)


def finalize(acc):
    """uint8 labels (D, H, W) from the accumulated logits (C, D, H, W): argmax over channels, or for
    one channel logit > 0 (sigmoid > 0.5). Dividing by the weights first would not change them."""
    a = _view4(acc, "acc")
    labels = _arrays.empty(a, a.shape[1:], np.uint8, axis_order=(0, 1, 2))
    _C.finalize_tiles(a.spec(), labels.spec(), a.stream())
    return labels.obj


def sliding_window(volume, predict, patch_size, num_outputs: int, step: float = 0.5, batch_size: int = 4,
                   return_logits: bool = False, progress: bool = False):
    """Run ``predict`` over tiles of ``volume`` (C, D, H, W) and stitch the outputs as nnU-Net does.

    predict: maps a float32 batch (B, C, d, h, w) of the volume's kind and device to logits
    (B, num_outputs, d, h, w). The volume is padded with 0 to at least ``patch_size`` (nnU-Net's
    rule), tiles follow :func:`tile_origins`, each output is weighted by the Gaussian importance map
    and accumulated in float32. Returns uint8 labels (D, H, W), or with ``return_logits`` the
    weight-normalised logits (num_outputs, D, H, W) too, both cropped back to the input's shape.
    """
    src = _view4(volume, "volume")
    patch = _arrays.shape3(patch_size, "patch_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pads = pad_amounts(src.shape[1:], patch)
    shape = padded_shape(src.shape[1:], patch)
    origins = tile_origins(src.shape[1:], patch, step)
    # Tiles are gathered from the unpadded volume with a shift: positions outside it read the pad 0.
    shifted = [tuple(o[a] - pads[a][0] for a in range(3)) for o in origins]
    weight_map = gaussian_importance_map(patch)
    acc = _arrays.empty(src, (num_outputs,) + shape, np.float32, axis_order=(0, 1, 2, 3), zeroed=True).obj
    weight = _arrays.empty(src, shape, np.float32, axis_order=(0, 1, 2), zeroed=True).obj
    if src.kind == "torch":
        import torch

        weight_map = torch.from_numpy(weight_map).to(src.obj.device)
    batches = range(0, len(origins), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="sliding window", unit="batch", leave=False)
    for b in batches:
        tiles = gather_tiles(src.obj, shifted[b:b + batch_size], patch)
        logits = predict(tiles)
        if tuple(logits.shape) != (len(tiles), num_outputs) + patch:
            raise ValueError(f"predict returned shape {tuple(logits.shape)}, expected {(len(tiles), num_outputs) + patch}")
        if logits.dtype != tiles.dtype:
            logits = logits.float() if src.kind == "torch" else logits.astype(np.float32)
        accumulate_tiles(acc, weight, logits, origins[b:b + batch_size], weight_map)
    crop = tuple(slice(p[0], p[0] + s) for p, s in zip(pads, src.shape[1:]))
    acc = acc[(slice(None),) + crop]
    labels = finalize(acc)
    if not return_logits:
        return labels
    return labels, acc / weight[crop]


# --- Training patches (nnU-Net's data loader semantics) ------------------------------------------

def class_locations(label, classes=None, seed: int = 1234, max_samples: int = 10000,
                    min_coverage: float = 0.01) -> dict:
    """Voxel coordinates (N x 3, (D, H, W)) sampled per class, as nnU-Net's preprocessing stores them.

    For each class present: min(max_samples, count) voxels, but at least ceil(count x min_coverage),
    drawn without replacement with ``np.random.RandomState(seed)`` in nnU-Net's order, so the result
    equals nnU-Net's ``_sample_foreground_locations`` (minus its channel column). ``classes``
    defaults to every nonzero label present.
    """
    lab = label.detach().cpu().numpy() if _arrays._is_torch(label) else np.asanyarray(label)
    if lab.ndim != 3:
        raise ValueError(f"label must be 3-D (D, H, W), got shape {lab.shape}")
    if classes is None:  # unique over the foreground only: np.unique sorts whatever it gets
        classes = [int(c) for c in np.unique(lab[lab != 0])]
    rnd = np.random.RandomState(seed)
    wanted = np.isin(lab, np.asarray(sorted(set(int(c) for c in classes)), dtype=np.int64))
    coords = np.argwhere(wanted)
    values = lab[wanted]
    order = np.argsort(values, kind="stable")
    values, coords = values[order], coords[order]
    out = {}
    for c in classes:
        c = int(c)
        lo, hi = np.searchsorted(values, c, "left"), np.searchsorted(values, c, "right")
        total = int(hi - lo)
        if total == 0:
            out[c] = np.zeros((0, 3), np.int64)
            continue
        n = max(min(max_samples, total), int(np.ceil(total * min_coverage)))
        out[c] = coords[lo + rnd.choice(total, n, replace=False)]
    return out


def sample_origin(shape, patch_size, force_foreground: bool, locations: dict | None, rng: np.random.Generator,
                  need_to_pad=(0, 0, 0)) -> tuple:
    """One patch origin with nnU-Net's ``get_bbox`` rule: random within the padded range, or, when
    foreground is forced, centred on a random voxel of a random present class (clamped only at the
    lower bound; the patch may reach past the upper border, where it is padded)."""
    patch = _arrays.shape3(patch_size, "patch_size")
    pad = [int(max(n, p - s)) if n + s < p else int(n) for n, s, p in zip(need_to_pad, shape, patch)]
    lbs = [-(p // 2) for p in pad]
    ubs = [s + p // 2 + p % 2 - q for s, p, q in zip(shape, pad, patch)]
    if force_foreground and locations:
        eligible = [c for c, v in locations.items() if len(v) > 0]
        if eligible:
            voxels = locations[eligible[rng.integers(len(eligible))]]
            v = voxels[rng.integers(len(voxels))]
            return tuple(int(max(lbs[a], v[a] - patch[a] // 2)) for a in range(3))
    return tuple(int(rng.integers(lbs[a], ubs[a] + 1)) for a in range(3))


class PatchSampler:
    """Endless batches of training patches with nnU-Net's semantics.

    cases: list of (image (C, D, H, W), label (D, H, W)) pairs, numpy (memory-mapped ones too) or
    torch (CPU or CUDA), optionally with a third item, the case's :func:`class_locations` (computed
    here otherwise, which reads the whole label); each
    batch picks ``batch_size`` cases uniformly with replacement, the last ``oversample_foreground``
    fraction of the batch (nnU-Net: round(B x (1 - 0.33)) onwards) centred on foreground. Patches
    past the border are padded: image 0, label -1 (nnU-Net's ignore value). Yields
    ``(images float32 (B, C, p...), labels int16 (B, 1, p...))`` on the cases' device. Deterministic
    for a seed.
    """

    def __init__(self, cases, patch_size, batch_size: int = 2, oversample_foreground: float = 0.33, seed: int = 0):
        if not cases:
            raise ValueError("PatchSampler needs at least one (image, label) case")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= oversample_foreground <= 1:
            raise ValueError(f"oversample_foreground must be in [0, 1], got {oversample_foreground}")
        self.patch = _arrays.shape3(patch_size, "patch_size")
        self.batch_size = batch_size
        self.oversample_foreground = oversample_foreground
        self.rng = np.random.default_rng(seed)
        self.cases = []
        for n, case in enumerate(cases):
            if len(case) not in (2, 3):
                raise ValueError(f"cases[{n}] must be (image, label) or (image, label, locations)")
            image, label = case[:2]
            img = _view4(image, f"cases[{n}] image")
            lab = _arrays.adapt(label, f"cases[{n}] label")
            if tuple(lab.shape) != tuple(img.shape[1:]):
                raise ValueError(f"cases[{n}]: label shape {lab.shape} differs from image shape {img.shape[1:]}")
            if lab.dtype.kind not in "iu":
                raise TypeError(f"cases[{n}]: labels must be integers, got {lab.dtype}")
            locations = case[2] if len(case) == 3 else class_locations(lab.obj)
            self.cases.append((img.obj, self._as_int16(lab.obj), locations))

    @staticmethod
    def _as_int16(label):
        if _arrays._is_torch(label):
            import torch

            return label.to(torch.int16)[None]
        return np.asarray(label, np.int16)[None]

    def force_foreground(self, j: int) -> bool:
        """nnU-Net's ``get_do_oversample``: the sample j of a batch is forced to contain foreground."""
        return not j < round(self.batch_size * (1 - self.oversample_foreground))

    def __iter__(self):
        return self

    def torch_dataset(self):
        """This sampler as a ``torch.utils.data.IterableDataset`` of whole batches, for
        ``DataLoader(sampler.torch_dataset(), batch_size=None, num_workers=N)``. Each worker draws
        from its own stream (seeded from this sampler's generator and the worker id), so workers
        never repeat each other's batches."""
        import torch

        sampler = self
        base_seed = int(self.rng.integers(2**31))

        class _Batches(torch.utils.data.IterableDataset):
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                if info is not None:
                    sampler.rng = np.random.default_rng([base_seed, info.id])
                return sampler

        return _Batches()

    def __next__(self):
        picks = self.rng.integers(len(self.cases), size=self.batch_size)
        images, labels = [], []
        for j, c in enumerate(picks):
            image, label, locations = self.cases[c]
            origin = sample_origin(image.shape[1:], self.patch, self.force_foreground(j), locations, self.rng)
            images.append(gather_tiles(image, [origin], self.patch, pad=0.0))
            labels.append(gather_tiles(label, [origin], self.patch, pad=-1, dtype=np.int16))
        if _arrays._is_torch(images[0]):
            import torch

            return torch.cat(images), torch.cat(labels)
        return np.concatenate(images), np.concatenate(labels)


def augment(images, labels, rng: np.random.Generator, mirror_axes=(0, 1, 2), p_brightness: float = 0.15,
            p_contrast: float = 0.15, p_noise: float = 0.1):
    """Mirroring and intensity augmentation of a batch in place on its device (numpy or torch).

    Per sample, as nnU-Net's defaults: each spatial axis in ``mirror_axes`` flipped with probability
    0.5 (image and label together); brightness x U(0.75, 1.25) with ``p_brightness``; contrast
    (about the mean) x U(0.75, 1.25), clipped to the sample's old range, with ``p_contrast``;
    Gaussian noise of variance U(0, 0.1) with ``p_noise``. Returns (images, labels).
    """
    is_torch = _arrays._is_torch(images)
    if images.ndim != 5 or labels.ndim != 5 or images.shape[0] != labels.shape[0] or \
            tuple(images.shape[2:]) != tuple(labels.shape[2:]):
        raise ValueError(f"images (B, C, d, h, w) and labels (B, 1, d, h, w) must share batch and patch size, got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    b = images.shape[0]
    for j in range(b):
        flips = tuple(2 + a for a in mirror_axes if rng.random() < 0.5)
        if flips:
            if is_torch:
                images[j] = images[j].flip([f - 1 for f in flips])
                labels[j] = labels[j].flip([f - 1 for f in flips])
            else:
                images[j] = np.flip(images[j], [f - 1 for f in flips])
                labels[j] = np.flip(labels[j], [f - 1 for f in flips])
        x = images[j]
        if rng.random() < p_brightness:
            x *= float(rng.uniform(0.75, 1.25))
        if rng.random() < p_contrast:
            lo, hi = float(x.min()), float(x.max())
            mean = float(x.mean())
            x -= mean
            x *= float(rng.uniform(0.75, 1.25))
            x += mean
            if is_torch:
                x.clamp_(lo, hi)
            else:
                np.clip(x, lo, hi, out=x)
        if rng.random() < p_noise:
            sd = float(np.sqrt(rng.uniform(0, 0.1)))
            seed = int(rng.integers(2**31))
            if is_torch:
                import torch

                gen = torch.Generator(device=x.device).manual_seed(seed)
                x += torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * sd
            else:
                x += np.random.default_rng(seed).standard_normal(x.shape).astype(x.dtype) * sd
    return images, labels
