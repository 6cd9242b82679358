"""3-D connected components, component statistics and small-component removal.

Conventions (as cc3d and scipy.ndimage.label):

* ``connectivity`` 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners).
* 0 is background. Neighbouring voxels join when their values are equal, so a multi-label map
  (organs, say) gives one component per connected region of each label; a binary mask is the
  special case of one label.
* Labels are int32, consecutive from 1, numbered by each component's first voxel in (i, j, k)
  raster order (C order). That is scipy.ndimage.label's numbering, and cc3d's for C-ordered input
  (cc3d numbers a Fortran-ordered array in memory order instead).
* numpy in, numpy out (laid out in the input's memory order); torch in, torch out on its device.
"""
from __future__ import annotations

import numpy as np

from . import _C, _arrays

_CONNECTIVITIES = (6, 18, 26)


def _mask(mask, name="mask") -> _arrays.Array:
    if _arrays._is_torch(mask):
        import torch

        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
    else:
        mask = np.asanyarray(mask)
        if mask.dtype == np.bool_:
            mask = mask.view(np.uint8)
    a = _arrays.adapt(mask, name)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume indexed (i, j, k), got shape {a.shape}")
    if min(a.shape) == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return a


def label(mask, connectivity: int = 26):
    """Label the connected components of a 3-D mask or label map.

    Parameters
    ----------
    mask : numpy array or torch tensor (CPU or CUDA), 3-D
        bool, uint8, int16, int32, float32 or float64; 0 is background, other values are labels
        (neighbours join only when their values are equal).
    connectivity : 6, 18 or 26

    Returns
    -------
    (labels, count): int32 labels 1..count (0 background) of the input's kind and device, and the
    number of components.
    """
    src = _mask(mask)
    if connectivity not in _CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if np.prod(src.shape, dtype=np.int64) >= 2**31 - 1:
        raise ValueError(f"mask of shape {src.shape} has 2^31 voxels or more; label it in parts")
    if src.on_cuda:
        out = _arrays.empty(src, src.shape, np.int32, axis_order=(0, 1, 2))
        blocks = -(-int(np.prod(src.shape)) // 1024)
        scratch = _arrays.empty(src, (blocks + 1, 1, 1), np.int32, axis_order=(0, 1, 2)).spec()
    else:
        out = _arrays.empty(src, src.shape, np.int32, axis_order=_arrays.memory_order(src), zeroed=True)
        scratch = None
    count = _C.label(src.spec(), out.spec(), connectivity, scratch, src.stream())
    return out.obj, int(count)
