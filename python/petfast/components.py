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

import math

import numpy as np

from . import _C, _arrays

_CONNECTIVITIES = (6, 18, 26)
# label_with_stats hands the labeller statistics tables of this many components: lesion masks and
# organ maps fit (one pass over the labels fewer); a mask with more components (noise) gets
# component_stats' own pass. Small, as a CUDA call copies the whole table back.
_LABEL_STATS_ROWS = 1024


def _bool_as_uint8(x):
    """x, with a bool array or tensor viewed as uint8 (the kernels read bytes)."""
    if _arrays._is_torch(x):
        import torch

        return x.view(torch.uint8) if x.dtype == torch.bool else x
    x = np.asanyarray(x)
    return x.view(np.uint8) if x.dtype == np.bool_ else x


def _mask(mask, name="mask") -> _arrays.Array:
    a = _arrays.adapt(_bool_as_uint8(mask), name)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume indexed (i, j, k), got shape {a.shape}")
    if min(a.shape) == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if a.dtype.kind == "f" and any(map(math.isnan, _extremes(a.obj))):  # NaN != NaN: each would be a component
        raise ValueError(f"{name} contains NaN values")
    return a


def _finite(x) -> bool:
    """No NaN or infinity in ``x`` (numpy or torch): they show in its extremes, so two reductions and
    no boolean volume as isfinite() would make."""
    return all(map(math.isfinite, _extremes(x)))


def _extremes(x) -> tuple[float, float]:
    """(min, max) of a numpy array or torch tensor (NaN when it holds one). A large 3-D integer numpy
    volume (labels, masks) takes one multithreaded pass: numpy's min() and max() are two
    single-threaded ones (18 -> 6.5 ms on whole-body labels; numpy's own SIMD wins on floats). A
    tensor takes torch.aminmax."""
    if _arrays._is_torch(x):
        import torch

        return tuple(float(v) for v in torch.aminmax(x))
    if x.ndim == 3 and x.size >= 1 << 16 and x.dtype.kind in "iu" and x.dtype in _arrays._CODES:
        return _C.extremes(_arrays.adapt(x, "volume").spec())
    return float(x.min()), float(x.max())


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
    labels, count, _, _ = _label(mask, connectivity)
    return labels, count


def label_with_stats(mask, image=None, spacing=(1.0, 1.0, 1.0), connectivity: int = 26):
    """:func:`label`, then :func:`component_stats` of the labels, in one call: the statistics are
    gathered while the labels are written (CPU or CUDA), which saves a pass over the labels when the
    mask has at most 1024 components (lesion masks, organ maps); with more it takes that pass.

    Returns (labels, count, :class:`ComponentStats`), each as :func:`label` and
    :func:`component_stats` return them; ``image`` (e.g. PET in SUV) and ``spacing`` (mm along
    (i, j, k)) as there.
    """
    sp = _spacing(spacing)
    labels, count, table, img = _label(mask, connectivity, image, stats=True)
    if count > _LABEL_STATS_ROWS:  # the image as the labeller read it: a CUDA copy is not made twice
        return labels, count, _stats(labels, count, img, sp)
    return labels, count, _stats_from_table(_to_numpy(table), _LABEL_STATS_ROWS + 1, count, sp, image is not None)


def _label(mask, connectivity, image=None, stats=False):
    """(labels, count, statistics table or None, image checked or None) for label() and
    label_with_stats(): with ``stats`` the table (see _stats_tables) of _LABEL_STATS_ROWS + 1 rows,
    filled when count fits it."""
    src = _arrays.c_order_on_cuda(_mask(mask))
    if connectivity not in _CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if np.prod(src.shape, dtype=np.int64) >= 2**31 - 1:
        raise ValueError(f"mask of shape {src.shape} has 2^31 voxels or more; label it in parts")
    if src.on_cuda:
        out = _arrays.empty(src, src.shape, np.int32, axis_order=(0, 1, 2))
        scratch = _arrays.empty(src, (_C.label_scratch_size(*src.shape), 1, 1), np.int32, axis_order=(0, 1, 2)).spec()
    else:
        out = _arrays.empty(src, src.shape, np.int32, axis_order=_arrays.memory_order(src), zeroed=True)
        scratch = None
    table, tables, img = None, {}, None
    if stats:
        img = None if image is None else _image(image, src, "mask")
        table, acc, box = _stats_tables(src, _LABEL_STATS_ROWS + 1)
        tables = {"image": img.spec() if img else None, "acc": acc.spec(), "box": box.spec()}
    count = _C.label(src.spec(), out.spec(), connectivity, scratch, src.stream(), **tables)
    return out.obj, int(count), table, img


def _binary_mask(x, name):
    """x as a 0/1 uint8 mask (no copy when it is bool, or uint8 holding 0 and 1). Other values are an
    error: a probability map or a multi-class label map would be scored silently wrong. A host mask
    of another kernel dtype (int16, float32 as NIfTI files often hold) is checked and converted in
    one multithreaded pass."""
    torch_in = _arrays._is_torch(x)
    if torch_in:
        import torch

        if x.dtype == torch.bool:
            return x.view(torch.uint8)
        uint8 = x.dtype == torch.uint8
    else:
        x = np.asanyarray(x)
        if x.ndim != 3:
            raise ValueError(f"{name} must be a 3-D mask, got shape {x.shape}")
        if x.dtype == np.bool_:
            return x.view(np.uint8)
        if x.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a bool or numeric mask, got dtype {x.dtype}")
        uint8 = x.dtype == np.uint8
    host = not torch_in or x.device.type == "cpu"
    kernel_dtype = x.dtype in (_arrays._torch_dtypes() if torch_in else _arrays._CODES)
    if uint8:
        lo, hi = (0.0, float(x.max())) if not torch_in else _extremes(x)
        if hi <= 1:
            return x
    elif host and kernel_dtype and x.ndim == 3 and min(x.shape) > 0:
        a = _arrays.adapt(x, name)
        out = _arrays.empty(a, a.shape, np.uint8, axis_order=_arrays.memory_order(a))
        if not _C.binary_mask(a.spec(), out.spec()):
            return out.obj
        lo, hi = _extremes(x)
    else:
        lo, hi = _extremes(x)
        if not math.isnan(lo + hi) and lo >= 0 and hi <= 1 and bool(((x == 0) | (x == 1)).all()):
            return (x != 0).to(torch.uint8) if torch_in else (x != 0).view(np.uint8)
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN values")
    raise ValueError(f"{name} must be a binary mask (values 0 and 1), got values in [{lo:g}, {hi:g}]; "
                     f"binarise it first (e.g. {name} > 0.5 for probabilities, {name} == k for one class)")


class ComponentStats(dict):
    """Per-component statistics; each value is a numpy array with one row per label 1..N (row 0 is
    label 1). Keys: ``voxels``, ``volume_ml``, ``bbox`` (N x 6: min i, max i, min j, max j, min k,
    max k, inclusive voxel indices), ``centroid_mm`` (N x 3, along the array axes from the centre of
    voxel (0, 0, 0), i.e. index x spacing), and with an image ``max``, ``mean``, ``sum``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"ComponentStats has no field {name!r}") from None


def _labels(labels) -> _arrays.Array:
    a = _arrays.adapt(labels, "labels")
    if a.ndim != 3:
        raise ValueError(f"labels must be a 3-D volume, got shape {a.shape}")
    if a.dtype != np.int32:
        raise TypeError(f"labels must be int32 (as petfast.label returns), got {a.dtype}")
    return a


def _spacing(spacing) -> np.ndarray:
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.shape != (3,) or not all(math.isfinite(v) and v > 0 for v in s.tolist()):
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {spacing!r}")
    return s


def component_stats(labels, image=None, spacing=(1.0, 1.0, 1.0), count=None) -> ComponentStats:
    """Statistics of each labelled component in one pass over the volume (CPU or CUDA).

    labels: int32 labels 1..N as :func:`label` returns (0 background). image: optional volume of the
    same shape on the same device (e.g. PET in SUV; a bool mask, whose ``sum`` is then each
    component's overlap with it). spacing: voxel size in mm along (i, j, k).
    count: N, as :func:`label` returns it; saves finding it, a pass over the labels (half the time on
    the CPU). Returns a :class:`ComponentStats` of numpy arrays (small, one row per label 1..N; a
    label with no voxels has 0 voxels and NaN means). A NaN image value inside a component, and a
    label outside 0..count, are a ValueError (outside the components the image is not read).
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0):
        raise ValueError(f"count must be a non-negative integer (as petfast.label returns it), got {count!r}")
    return _stats(labels, count, image, spacing)


def _image(image, like: _arrays.Array, like_name: str) -> _arrays.Array:
    """The image checked against the labels or mask it goes with (shape, device); a bool image (another
    mask, whose ``sum`` then counts the overlap) is read as 0/1 bytes. An image _image() returned
    already is taken as it is."""
    img = image
    if not isinstance(img, _arrays.Array):
        img = _arrays.c_order_on_cuda(_arrays.adapt(_bool_as_uint8(image), "image"))
    if img.shape != like.shape:
        raise ValueError(f"image shape {img.shape} differs from {like_name} shape {like.shape}")
    if img.device != like.device:
        raise ValueError(f"image and {like_name} live on different devices")
    return img


def _stats_tables(like: _arrays.Array, rows: int):
    """(table, acc, box): one buffer on like's device holding both statistics tables, per row 6
    float64 sums, then per row 6 int32 box bounds (acc and box: their views as the ops take them),
    so that a CUDA call copies its results back once, with one wait."""
    table = _arrays.empty(like, (rows * 9,), np.float64)
    acc = _arrays.Array(table.obj, table.kind, np.dtype(np.float64), (rows, 6, 1), (6, 1, 1), table.ptr, table.device)
    box = _arrays.Array(table.obj, table.kind, np.dtype(np.int32), (rows, 6, 1), (6, 1, 1), table.ptr + rows * 6 * 8,
                        table.device)
    return table.obj, acc, box


def _stats(labels, count, image=None, spacing=(1.0, 1.0, 1.0)) -> ComponentStats:
    lab = _arrays.c_order_on_cuda(_labels(labels))
    sp = _spacing(spacing)
    img = None if image is None else _image(image, lab, "labels")
    count = _count(lab) if count is None else int(count)
    table, acc, box = _stats_tables(lab, count + 1)
    _C.component_stats(lab.spec(), img.spec() if img else None, count, acc.spec(), box.spec(), lab.stream())
    return _stats_from_table(_to_numpy(table), count + 1, count, sp, img is not None)


def _stats_from_table(host: np.ndarray, rows: int, count: int, sp: np.ndarray, with_image: bool) -> ComponentStats:
    """ComponentStats of labels 1..count from a host copy of a _stats_tables table of `rows` rows."""
    a = host[:rows * 6].reshape(rows, 6)
    if a[0, 1] > 0:  # row 0: the voxels whose label is outside 0..count, then the NaN image values
        raise ValueError(f"{int(a[0, 1])} voxels have labels outside 0..{count}: count must be the largest "
                         "label (as petfast.label returns it), and labels are not negative")
    if a[0, 0] > 0:
        raise ValueError(f"image contains NaN values inside the components ({int(a[0, 0])} voxels)")
    a = a[1:count + 1]
    b = host[rows * 6:].view(np.int32).reshape(rows, 6)[1:count + 1]
    voxels = a[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ComponentStats(voxels=voxels.astype(np.int64), volume_ml=voxels * np.prod(sp) / 1000.0, bbox=b,
                             centroid_mm=a[:, 1:4] / voxels[:, None] * sp)
        if with_image:
            out.update(sum=a[:, 4], mean=a[:, 4] / voxels, max=a[:, 5])
    return out


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _arrays._is_torch(x) else np.asanyarray(x)


def _count(lab: _arrays.Array) -> int:
    """The largest label; negative labels are an error (the op would skip them silently)."""
    lo, hi = (int(v) for v in _extremes(lab.obj))
    if lo < 0:
        raise ValueError(f"labels must be non-negative (0 background, 1..N components), got {lo}")
    return hi


def remove_small(mask, min_voxels: int | None = None, min_ml: float | None = None, spacing=None,
                 connectivity: int = 26):
    """``mask`` with every component smaller than the threshold set to 0 (like cc3d.dust).

    Give ``min_voxels``, or ``min_ml`` with ``spacing`` (mm). Components with at least that many
    voxels (or ml) are kept. Returns an array of the mask's dtype, kind and device.
    """
    if (min_voxels is None) == (min_ml is None):
        raise ValueError("give exactly one of min_voxels or min_ml")
    if min_ml is not None:
        if spacing is None:
            raise ValueError("min_ml needs spacing (voxel size in mm)")
        min_voxels = float(min_ml) * 1000.0 / float(np.prod(_spacing(spacing)))
    if min_voxels < 0:
        raise ValueError(f"the size threshold must be non-negative, got {min_voxels}")
    labels, count, stats = label_with_stats(mask, connectivity=connectivity)
    voxels = stats["voxels"]
    keep = np.concatenate([[True], voxels >= min_voxels])
    if _arrays._is_torch(labels) and labels.is_cuda:
        import torch

        keep_t = torch.from_numpy(keep).to(labels.device)
        return torch.where(keep_t[labels.long()], mask, torch.zeros((), dtype=mask.dtype, device=mask.device))
    # A copy of the mask in its own memory order (the labels'), the dropped components' voxels zeroed.
    if _arrays._is_torch(mask):
        out = mask.clone()
    else:
        m = np.asanyarray(mask)
        out = np.array(m, dtype=m.dtype.newbyteorder("="), order="K")  # a native-byte-order copy
    if not keep.all():
        table = keep.astype(np.uint8).reshape(-1, 1, 1)
        _C.drop_components(_labels(labels).spec(), _arrays.adapt(table, "keep").spec(),
                           _arrays.adapt_inplace(_bool_as_uint8(out), "out").spec())
    return out
