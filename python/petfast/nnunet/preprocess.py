"""nnU-Net v2's inference preprocessing and its inverse, on torch tensors (CPU or CUDA).

Arrays here are channel-first (C, *spatial) in nnU-Net's axis order (SimpleITK's (z, y, x) after the
plans' ``transpose_forward``); spacings are in mm along the same axes. What each step reproduces
(``nnunetv2`` 2.2-2.8, ``DefaultPreprocessor.run_case_npy`` and ``export_prediction``):

* :func:`nonzero_bbox`: the crop to the nonzero region of all channels (the whole image when it is
  empty). nnU-Net fills holes in the mask first, which cannot change its bounding box.
* :func:`normalize`: per channel by scheme name, in float32, *before* resampling. ``CTNormalization``
  clips to the plans' 0.5/99.5 foreground percentiles, subtracts their mean, divides by their std;
  ``ZScoreNormalization`` uses the image's own mean and std (population std, floor 1e-8), over the
  hole-filled nonzero mask when ``use_mask_for_norm``; ``NoNormalization``, ``RescaleTo01Normalization``
  and ``RGBTo01Normalization`` as nnU-Net. Image statistics are numpy's float32 pairwise sums on
  the CPU (nnU-Net's arithmetic) and float64 reductions on a GPU (they agree to about 1e-6 relative).
* :func:`resize_image`: skimage's ``resize(order=3, mode='edge')`` as nnU-Net calls it, which is
  scipy's ``zoom(order=3, mode='nearest', grid_mode=True)`` clipped to the input's range: edge values
  repeated 12 voxels, a cubic B-spline prefilter, half-voxel aligned sampling; run by petfast's
  resampling kernel. With a strongly anisotropic spacing (ratio > 3) nnU-Net resizes in-plane only
  and takes the nearest slice along the coarse axis; so does this.
* :func:`resize_logits`: the way back, trilinear with half-voxel alignment (``order=1``), which is
  ``torch.nn.functional.interpolate(mode='trilinear', align_corners=False)`` (nearest slice along a
  separate axis).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import _arrays, _C
from ..components import label

ANISO_THRESHOLD = 3.0  # nnU-Net's configuration.ANISO_THRESHOLD
_PAD = 12  # scipy pads this much before its spline prefilter in mode 'nearest'
SCHEMES = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
           "RGBTo01Normalization")


def nonzero_bbox(data: torch.Tensor) -> tuple[slice, ...]:
    """Half-open bounding box (one slice per spatial axis) of the voxels nonzero in any channel of
    ``data`` (C, z, y, x); the whole extent when every voxel is zero."""
    # An axis's box reaches both ends exactly when its two end slices hold a nonzero voxel. A
    # whole-body CT (air at -1000 HU up to its edges) always does: six faces instead of a full pass.
    if all(bool(data.select(1 + a, end).any()) for a in range(3) for end in (0, -1)):
        return tuple(slice(0, n) for n in data.shape[1:])
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    # Two passes over the mask give all three projections; amax over its bytes is 5-8x faster than
    # any() over bool on the CPU.
    mask = mask.view(torch.uint8)
    zy = mask.amax(2)
    box = []
    for hit in (zy.amax(1), zy.amax(0), mask.amax((0, 1))):
        idx = torch.nonzero(hit).flatten()
        if idx.numel() == 0:
            return tuple(slice(0, n) for n in mask.shape)
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """scipy's ``binary_fill_holes``: background not 6-connected to the border becomes foreground."""
    background, _ = label(~mask, connectivity=6)
    faces = [background.select(a, i).flatten() for a in range(3) for i in (0, -1)]
    outside = torch.unique(torch.cat(faces))
    return mask | ((background > 0) & ~torch.isin(background, outside[outside > 0]))


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of float32 ``x``: on the CPU numpy's float32 pairwise sums, which is
    nnU-Net's own arithmetic and 4x faster than torch's float64 reductions there; float64 on a GPU."""
    if x.device.type == "cpu":
        a = x.numpy()
        return float(a.mean()), float(a.std())
    return x.mean(dtype=torch.float64).item(), math.sqrt(max(x.double().var(unbiased=False).item(), 0.0))


def normalize(data: torch.Tensor, schemes, use_mask, intensity_properties) -> torch.Tensor:
    """Normalise each channel of float32 ``data`` in place (see the module notes); returns it."""
    if len(schemes) != data.shape[0]:
        raise ValueError(f"the plans name {len(schemes)} normalisation schemes for {data.shape[0]} channels")
    mask = None
    for c, scheme in enumerate(schemes):
        x = data[c]
        if scheme == "CTNormalization":
            props = intensity_properties.get(str(c)) if intensity_properties else None
            if props is None:
                raise ValueError(f"channel {c} uses CTNormalization but the plans have no foreground intensity "
                                 "properties for it")
            x.clamp_(props["percentile_00_5"], props["percentile_99_5"])
            x.sub_(props["mean"]).div_(max(props["std"], 1e-8))
        elif scheme == "ZScoreNormalization":
            if use_mask[c]:
                if mask is None:
                    mask = fill_holes((data != 0).any(0))
                values = x[mask].double()
                mean, std = values.mean().item(), values.std(unbiased=False).item()
                x[mask] = ((x[mask] - mean) / max(std, 1e-8)).to(x.dtype)
            else:
                mean, std = _mean_std(x)
                x.sub_(mean).div_(max(std, 1e-8))
        elif scheme == "RescaleTo01Normalization":
            x.sub_(x.min())
            x.div_(max(x.max().item(), 1e-8))
        elif scheme == "RGBTo01Normalization":
            if x.min() < 0 or x.max() > 255:
                raise ValueError(f"channel {c} uses RGBTo01Normalization but its values leave [0, 255]")
            x.div_(255.0)
        elif scheme != "NoNormalization":
            raise ValueError(f"unknown normalisation scheme {scheme!r} for channel {c} (known: {', '.join(SCHEMES)})")
    return data


def new_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: round(old spacing / new spacing x old size), Python's rounding,
    at least 1 (where nnU-Net's 0 would fail: a thin image on a much finer grid than the model's)."""
    return tuple(max(1, int(round(s / t * n))) for s, t, n in zip(spacing, target_spacing, shape))


def separate_axis(spacing, target_spacing) -> int | None:
    """The axis nnU-Net resamples separately (nearest neighbour) for anisotropic data, or None."""
    for sp in (spacing, target_spacing):
        sp = np.asarray(sp, np.float64)
        if sp.max() / sp.min() > ANISO_THRESHOLD:
            axes = np.flatnonzero(sp == sp.max())
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _nearest_along(x: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """scipy's ``map_coordinates(order=0, mode='nearest')`` at half-voxel aligned positions."""
    size = x.shape[axis]
    if size == n:
        return x
    pos = (torch.arange(n, dtype=torch.float64) + 0.5) * (size / n) - 0.5
    idx = torch.floor(pos + 0.5).clamp_(0, size - 1).long().to(x.device)
    return x.index_select(axis, idx)


def resize_image(data: torch.Tensor, shape, axis: int | None = None) -> torch.Tensor:
    """Cubic B-spline resize of each channel of ``data`` (C, z, y, x) to ``shape`` (module notes)."""
    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    inplane = list(shape)
    if axis is not None:
        inplane[axis] = data.shape[1 + axis]
    out = torch.empty((data.shape[0], *inplane), dtype=torch.float32, device=data.device)
    # Destination index -> index into the edge-padded source, half-voxel aligned.
    m = np.eye(4)
    for a, (n_in, n_out) in enumerate(zip(data.shape[1:], inplane)):
        m[a, a] = n_in / n_out
        m[a, 3] = 0.5 * n_in / n_out - 0.5 + _PAD
    for c in range(data.shape[0]):
        x = _arrays.adapt(data[c], "channel")
        # The prefilter pads (edge values repeated) as it converts: no padded copy.
        coef = _arrays.empty(x, [n + 2 * _PAD for n in x.shape], np.float32)
        dst = _arrays.adapt(out[c], "out")
        _C.bspline_prefilter(x.spec(), coef.spec(), coef.stream())
        _C.resample(coef.spec(), dst.spec(), m[:3].ravel().tolist(), 3, 0.0, coef.stream())
        if axis is None:
            lo, hi = torch.aminmax(data[c])
            out[c].clamp_(lo, hi)
        else:  # nnU-Net resizes slice by slice and clips each slice to its own range
            others = tuple(a for a in range(3) if a != axis)
            lo, hi = data[c].amin(others, keepdim=True), data[c].amax(others, keepdim=True)
            out[c] = torch.maximum(torch.minimum(out[c], hi), lo)
    if axis is not None:
        out = _nearest_along(out, 1 + axis, shape[axis])
    return out


def resize_logits(logits: torch.Tensor, shape, axis: int | None = None) -> torch.Tensor:
    """Trilinear resize of (K, z, y, x) logits to ``shape`` (bilinear + nearest slice with ``axis``)."""
    shape = tuple(int(s) for s in shape)
    if tuple(logits.shape[1:]) == shape:
        return logits
    if axis is None:
        return F.interpolate(logits[None].float(), size=shape, mode="trilinear", align_corners=False)[0]
    x = logits.float().movedim(1 + axis, 0)  # slices as the batch
    inplane = [s for a, s in enumerate(shape) if a != axis]
    x = F.interpolate(x, size=inplane, mode="bilinear", align_corners=False).movedim(0, 1 + axis)
    return _nearest_along(x, 1 + axis, shape[axis])
