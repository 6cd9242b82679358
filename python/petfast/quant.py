"""PET quantification of segmented lesions: MTV, SUVmax, SUVmean, SUVpeak, TLG, lesion count, Dmax.

* Lesions are the connected components of the binary mask (18-connectivity, as autoPET's metrics).
* ``volume_ml`` (per lesion MTV) = voxels x voxel volume; ``tlg`` = SUVmean x volume_ml (g).
* ``suv_peak``: mean SUV of the voxels whose centres lie within the 1 ml sphere (radius 6.20 mm)
  centred on the lesion's hottest voxel, lesion or not (the PERCIST-style definition used in
  clinical software, without the search for the hottest sphere).
* ``dmax_mm``: the largest distance between two lesion centroids (0 for fewer than two lesions).
* Distances and centroids are in mm along the array axes (index x spacing).
"""
from __future__ import annotations

import math

import numpy as np

from .components import _binary_mask, _finite, _spacing, _to_numpy, label_with_stats
from .metrics import CONNECTIVITY

LESION_COLUMNS = ("lesion", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg", "voxels", "centroid_mm",
                  "hottest_voxel")
PEAK_RADIUS_MM = (3.0 * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # a 1 ml sphere


def _suv_peak(pet: np.ndarray, centre: tuple, spacing: np.ndarray) -> float:
    r = np.ceil(PEAK_RADIUS_MM / spacing).astype(int)
    lo = [max(c - rr, 0) for c, rr in zip(centre, r)]
    hi = [min(c + rr + 1, n) for c, rr, n in zip(centre, r, pet.shape)]
    block = pet[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    d = [(np.arange(l, h) - c) * s for l, h, c, s in zip(lo, hi, centre, spacing)]
    inside = d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2 <= PEAK_RADIUS_MM**2
    return float(block[inside].mean())


def lesions(pet_suv, mask, spacing) -> dict:
    """Per-lesion and per-study quantification.

    pet_suv: PET in SUV; mask: binary lesion mask (0/1 or bool) of the same shape; spacing: voxel size
    in mm along (i, j, k). Returns ``{"lesions": [per-lesion dicts], "study": {...}}`` with the fields
    of the module notes; per lesion also its centroid (mm) and the index of its hottest voxel.
    """
    m = _to_numpy(_binary_mask(mask, "mask"))
    pet, sp = _pet(pet_suv, m.shape), _spacing(spacing)
    labels, _, st = label_with_stats(m, pet, sp, CONNECTIVITY)
    return _lesions(pet, labels, st, sp)


def _pet(pet_suv, shape) -> np.ndarray:
    """pet_suv as a numpy volume, checked against the mask's shape and for NaN or infinity."""
    pet = _to_numpy(pet_suv)
    if pet.shape != tuple(shape) or pet.ndim != 3:
        raise ValueError(f"pet_suv {pet.shape} and mask {tuple(shape)} must be 3-D volumes of one shape")
    if pet.dtype.kind == "f" and not _finite(pet):
        raise ValueError("pet_suv contains NaN or infinite values")
    return pet


def _lesions(pet: np.ndarray, labels: np.ndarray, st, sp: np.ndarray) -> dict:
    """lesions() from a checked PET (see _pet), the mask's labels at CONNECTIVITY (numpy), which
    `petfast evaluate` shares with the metrics, their statistics with the PET, and the spacing
    checked by _spacing."""
    count = len(st.voxels)
    rows = []
    for n in range(count):
        b = st.bbox[n]
        box = (slice(b[0], b[1] + 1), slice(b[2], b[3] + 1), slice(b[4], b[5] + 1))
        inside = labels[box] == n + 1
        values = np.where(inside, pet[box], -np.inf)
        hot = np.unravel_index(int(np.argmax(values)), values.shape)
        hot = tuple(int(h + s.start) for h, s in zip(hot, box))
        rows.append({
            "lesion": n + 1, "volume_ml": float(st.volume_ml[n]), "suv_max": float(st["max"][n]),
            "suv_mean": float(st["mean"][n]), "suv_peak": _suv_peak(pet, hot, sp),
            "tlg": float(st["mean"][n] * st.volume_ml[n]), "voxels": int(st.voxels[n]),
            "centroid_mm": st.centroid_mm[n].tolist(), "hottest_voxel": list(hot),
        })
    cents = st.centroid_mm
    dmax = 0.0
    if count > 1:
        diff = cents[:, None, :] - cents[None, :, :]
        dmax = float(np.sqrt((diff**2).sum(-1)).max())
    study = {
        "lesion_count": count,
        "mtv_ml": float(st.volume_ml.sum()),
        "tlg": float(sum(r["tlg"] for r in rows)),
        "suv_max": float(st["max"].max()) if count else math.nan,
        "suv_mean": float(st["sum"].sum() / st.voxels.sum()) if count else math.nan,
        "dmax_mm": dmax,
    }
    return {"lesions": rows, "study": study}
