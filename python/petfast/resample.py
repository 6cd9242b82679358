"""Resampling a volume onto another grid: CT onto the PET grid, labels onto an image grid.

Conventions
-----------
* An affine maps an array's voxel index (i, j, k) to world millimetres, as nibabel's ``img.affine``
  does for ``img.dataobj`` (RAS+ for NIfTI). Arrays are indexed in that same (i, j, k) order.
* Each destination voxel centre is mapped into the source by ``inv(src_affine) @ dst_affine``
  (a pull map, as nibabel, nilearn, MONAI and ITK do) and interpolated there.
* Edge rule: a sample whose source index lies within [0, n-1] on every axis (the span of the
  source voxel *centres*, widened by 1e-6 voxel against rounding) is interpolated; every other
  sample gets ``fill``. This is scipy.ndimage's ``mode='constant'`` rule, which nibabel and nilearn
  use and with which autoPET's ``CTres.nii.gz`` was made. SimpleITK instead counts half a voxel
  beyond the outer centres as inside, so at the FOV border (within half a source voxel) the two
  differ; inside they agree to float rounding.
* Orders: 0 nearest (keeps the dtype; ties round up, as scipy), 1 trilinear, 3 cubic B-spline
  (scipy's ``order=3`` with its prefilter; the spline's support mirrors about the edge voxel).
  Like scipy, nibabel and nilearn's ``resample_to_img`` (whose ``clip`` defaults to False), order 3
  is not clipped: a cubic spline overshoots a little at sharp edges (a few HU at air/tissue borders).
* NaN in the source spreads to the samples that touch it (no special treatment, as scipy).
* ``antialias=True`` smooths the source with a Gaussian before sampling along every source axis
  where the destination is coarser, with TorchIO's (Cardoso et al., MICCAI 2015) width
  ``sigma = sqrt((k**2 - 1) / (8 ln 2))`` source voxels for a downsampling factor k, truncated at
  4 sigma, edge values repeated. Off by default: models trained on autoPET saw no antialiasing.
* numpy in, numpy out (Fortran order kept when the input is Fortran-ordered, as nibabel's arrays
  are); torch in, torch out on the same device. CUDA tensors run on torch's current stream.
"""
from __future__ import annotations

import math

import numpy as np

from . import _C, _arrays

_ORDERS = (0, 1, 3)


def _affine(a, name: str) -> np.ndarray:
    if _arrays._is_torch(a):
        a = a.detach().cpu().numpy()
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a 4x4 array of numbers") from e
    if a.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 affine (index -> world mm), got shape {a.shape}")
    # Checked in plain Python: for 16 numbers that is several times faster than numpy's calls.
    rows = a.tolist()
    if not all(math.isfinite(v) for row in rows for v in row):
        raise ValueError(f"{name} contains NaN or infinite values")
    if max(abs(v - w) for v, w in zip(rows[3], (0.0, 0.0, 0.0, 1.0))) > 1e-6:
        raise ValueError(f"{name} must have (0, 0, 0, 1) as its last row, got {rows[3]}")
    (p, q, r), (s, t, u), (v, w, x) = (row[:3] for row in rows[:3])
    det = p * (t * x - u * w) - q * (s * x - u * v) + r * (s * w - t * v)
    axes = math.hypot(p, s, v) * math.hypot(q, t, w) * math.hypot(r, u, x)
    if not abs(det) > 1e-12 * axes:  # singular, or voxel axes so degenerate they nearly are
        raise ValueError(f"{name} is singular (a zero or degenerate voxel axis); it cannot map indices to space")
    return a


def index_map(src_affine, dst_affine) -> np.ndarray:
    """The 3x4 matrix taking a destination index (i, j, k, 1) to a continuous source index."""
    src = _affine(src_affine, "src_affine")
    dst = _affine(dst_affine, "dst_affine")
    if np.array_equal(src, dst):
        return np.eye(4)[:3]  # exact, so an identical grid is copied without rounding
    return (np.linalg.inv(src) @ dst)[:3]


def antialias_sigmas(m: np.ndarray) -> np.ndarray:
    """Gaussian widths (source voxels) per source axis for the index map m (see module notes)."""
    k = np.linalg.norm(m[:, :3], axis=1)  # source voxels crossed per destination voxel
    return np.where(k > 1, np.sqrt(np.maximum(k * k - 1, 0) / (8 * math.log(2))), 0.0)


def _gaussian_taps(sigma: float) -> list[float]:
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).tolist()


def _smooth(src: _arrays.Array, sigmas) -> _arrays.Array:
    """src convolved with a Gaussian along each axis with sigma > 0 (float32 scratch, C order)."""
    stream = src.stream()
    axes = [(axis, float(sigma)) for axis, sigma in enumerate(sigmas) if sigma > 0]
    buffers = [_arrays.empty(src, src.shape, np.float32, axis_order=(0, 1, 2)) for _ in range(min(len(axes), 2))]
    cur = src
    for n, (axis, sigma) in enumerate(axes):
        taps = _gaussian_taps(sigma)
        if len(taps) > 257:
            raise ValueError(f"antialias: the destination is too much coarser than the source "
                             f"(Gaussian sigma {sigma:.1f} voxels along axis {axis}); downsample in steps")
        dst = buffers[n % 2]
        _C.convolve_axis(cur.spec(), dst.spec(), axis, taps, stream)
        cur = dst
    return cur


def resample(image, src_affine, dst_shape, dst_affine, order: int = 1, fill: float = 0.0,
             antialias: bool = False):
    """Resample a 3-D volume onto another grid.

    Parameters
    ----------
    image : numpy array or torch tensor (CPU or CUDA), 3-D, indexed (i, j, k)
        uint8, int16, int32, float32 or float64; any strides or memory order.
    src_affine : (4, 4) array
        ``image``'s voxel-to-world affine in mm (``img.affine`` in nibabel).
    dst_shape : 3 ints
        Shape of the destination grid.
    dst_affine : (4, 4) array
        The destination grid's voxel-to-world affine in mm.
    order : 0, 1 or 3
        Nearest neighbour, trilinear or cubic B-spline (see the module notes for the edge rule).
    fill : float
        Value of destination voxels outside the source's extent. Must fit the dtype for order 0.
    antialias : bool
        Gaussian prefilter along source axes where the destination is coarser (orders 1 and 3).

    Returns
    -------
    Array of ``dst_shape``: float32 for orders 1 and 3, the input dtype for order 0; numpy for
    numpy input, a torch tensor on the input's device for torch input.

    Raises
    ------
    TypeError for an unsupported array type or dtype, or a CUDA tensor without CUDA kernels;
    ValueError for a wrong number of axes, an empty volume, bad shapes, singular or non-finite
    affines, an unknown order or a fill that does not fit; a ValueError that is also a
    MemoryError when the output does not fit in memory.
    """
    src = _arrays.c_order_on_cuda(_arrays.adapt(image, "image"))
    if src.ndim != 3:
        raise ValueError(f"image must be a 3-D volume indexed (i, j, k), got shape {src.shape}; "
                         "resample each channel of a 4-D image separately")
    if min(src.shape) == 0:
        raise ValueError(f"image is empty (shape {src.shape})")
    if order not in _ORDERS:
        raise ValueError(f"order must be 0 (nearest), 1 (trilinear) or 3 (cubic B-spline), got {order!r}")
    dst_shape = _arrays.shape3(dst_shape, "dst_shape")
    m = index_map(src_affine, dst_affine)
    fill = float(fill)
    out_dtype = src.dtype if order == 0 else np.dtype(np.float32)
    if order == 0:
        if antialias:
            raise ValueError("antialias smooths intensities; it does not apply to order=0 (labels)")
        if out_dtype.kind in "iu":
            info = np.iinfo(out_dtype)
            if not (fill.is_integer() and info.min <= fill <= info.max):
                raise ValueError(f"fill={fill} does not fit the image's dtype {out_dtype} (order=0 keeps it)")

    stream = src.stream()
    source = src
    if antialias:
        sigmas = antialias_sigmas(m)
        if np.any(sigmas > 0):
            source = _smooth(src, sigmas)
    if order == 3:
        coef = source if source is not src else _arrays.empty(src, src.shape, np.float32, axis_order=(0, 1, 2))
        _C.bspline_prefilter(source.spec(), coef.spec(), stream)
        source = coef
    out = _arrays.empty(src, dst_shape, out_dtype)
    _C.resample(source.spec(), out.spec(), m.ravel().tolist(), order, fill, stream)
    return out.obj


def resample_ct_to_pet(ct, ct_affine, pet_shape, pet_affine, order: int = 1, antialias: bool = False):
    """Resample a CT (HU) onto the PET grid; voxels outside the CT's field of view get -1024 HU (air).

    ``order=3`` reproduces the autoPET dataset's ``CTres.nii.gz``, which was made with
    ``nilearn.image.resample_to_img(ct, pet, fill_value=-1024)`` (cubic B-spline, unclipped, no
    antialiasing). ``order=1`` (default) is trilinear and several times faster.
    See :func:`resample` for conventions and errors.
    """
    return resample(ct, ct_affine, pet_shape, pet_affine, order=order, fill=-1024.0, antialias=antialias)
