"""autoPET metrics: Dice, false positive and false negative volume, and lesion-wise detection.

Definitions follow the official autoPET III/IV evaluation (ClinicalDataScience/autoPETIII
``evaluation_metrics.py``, lab-midas/autoPETCTIV), with connected components at 18-connectivity:

* ``dice`` = 2 |gt and pred| / (|gt| + |pred|); **NaN when the ground truth is empty**.
* ``fp_volume_ml``: total volume of predicted components that touch no ground-truth voxel
  (0 when the prediction is empty).
* ``fn_volume_ml``: total volume of ground-truth components that touch no predicted voxel;
  **NaN when the ground truth is empty**.
* Lesion-wise: ``tp_lesions`` (ground-truth components touched by the prediction), ``fn_lesions``
  (untouched ones), ``fp_lesions`` (predicted components touching no ground truth).

Masks are binary: bool, or any numeric dtype holding only 0 and 1 (other values are a ValueError).
For a cohort, autoPET averages Dice and FNV over the studies with lesions (NaN-skipping means) and
FPV over all studies: see :func:`aggregate`.
"""
from __future__ import annotations

import math

import numpy as np

from .components import _binary_mask, label_with_stats

CONNECTIVITY = 18


def _masks(gt, pred):
    """gt and pred checked as binary masks of one shape, as 0/1 uint8."""
    g, p = _binary_mask(gt, "gt"), _binary_mask(pred, "pred")
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"gt shape {tuple(g.shape)} differs from pred shape {tuple(p.shape)}")
    return g, p


def autopet(gt, pred, voxel_ml: float) -> dict:
    """autoPET metrics of one study. gt, pred: 3-D masks of one shape (numpy or torch, CPU or CUDA);
    voxel_ml: the volume of one voxel in ml (product of the spacing in mm / 1000). See module notes.

    Cost: two labelling passes, each gathering its components' sizes and overlaps with the other
    mask as it writes the labels; multithreaded on the CPU, or on the GPU."""
    if not (isinstance(voxel_ml, (int, float, np.floating)) and math.isfinite(voxel_ml) and voxel_ml > 0):
        raise ValueError(f"voxel_ml must be a positive number of ml, got {voxel_ml!r}")
    g, p = _masks(gt, pred)
    return _autopet(*_labelled(g, p), voxel_ml)


def _labelled(g, p):
    """label_with_stats of each checked mask (see _masks) at CONNECTIVITY, with the other mask as the
    image (the statistics' ``sum``: how many voxels of each component the other mask covers)."""
    return label_with_stats(g, p, connectivity=CONNECTIVITY), label_with_stats(p, g, connectivity=CONNECTIVITY)


def _autopet(g_labelled, p_labelled, voxel_ml: float) -> dict:
    """autopet() from _labelled(gt, pred), which `petfast evaluate` shares with the quantification."""

    def touching(labelled):  # each component's voxel count, and how many of them the other mask covers
        st = labelled[2]
        return st.voxels.astype(np.float64), st["sum"]

    gt_sizes, gt_hit = touching(g_labelled)
    pred_sizes, pred_hit = touching(p_labelled)
    n_gt, n_pred, inter = gt_sizes.sum(), pred_sizes.sum(), gt_hit.sum()
    fn = gt_hit == 0
    fp = pred_hit == 0
    return {
        "dice": float(2.0 * inter / (n_gt + n_pred)) if n_gt else math.nan,
        "fp_volume_ml": float(pred_sizes[fp].sum()) * voxel_ml,
        "fn_volume_ml": float(gt_sizes[fn].sum()) * voxel_ml if n_gt else math.nan,
        "tp_lesions": int((~fn).sum()),
        "fp_lesions": int(fp.sum()),
        "fn_lesions": int(fn.sum()),
        "gt_lesions": int(gt_sizes.size),
        "pred_lesions": int(pred_sizes.size),
        "gt_volume_ml": float(n_gt) * voxel_ml,
        "pred_volume_ml": float(n_pred) * voxel_ml,
    }


def aggregate(rows: list[dict]) -> dict:
    """Cohort summary as autoPET reports it: for every numeric field of the rows, the mean and median
    over the studies where it is defined (NaN-skipping: Dice and FNV over studies with lesions, FPV
    over all) and how many studies that was (``<field>_n``)."""
    out = {"studies": len(rows)}
    keys = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], (int, float, np.number))]
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[f"{key}_mean"] = float(values.mean()) if values.size else math.nan
        out[f"{key}_median"] = float(np.median(values)) if values.size else math.nan
        out[f"{key}_n"] = int(values.size)
    return out
