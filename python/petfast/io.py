"""NIfTI I/O at disk speed: whole-buffer gzip through libdeflate / ISA-L, nibabel as the header authority.

Conventions
-----------
* :func:`load` returns ``(data, affine, spacing, header)``. ``data`` is the on-disk voxel array in
  its stored dtype and (Fortran) memory order, indexed (i, j, k), exactly as
  ``np.asanyarray(nib.load(path).dataobj)`` gives it but without float64 upcasts or copies; it is
  **read-only** (a zero-copy view of the decompressed file): call ``.copy()`` to modify it. When the
  header sets a scale (``scl_slope`` not 0/1 or ``scl_inter`` not 0) the scaled float32 values are
  returned, as nibabel's ``dataobj`` does (in float32 rather than float64).
* ``affine`` follows nibabel's precedence: sform when its code is set, else qform, else the spacing.
  ``spacing`` is the voxel size in mm along (i, j, k) (header pixdim).
* :func:`save` writes atomically (a temporary file in the same folder, then a rename) and never
  replaces an existing file unless ``overwrite=True``. ``.nii.gz`` is compressed at level 1 (as
  nibabel does) with ISA-L on ``petfast.get_num_threads()`` threads; ``.nii`` is written plain.
* Decompression uses the fastest codec installed: libdeflate (``deflate`` on PyPI), then ISA-L
  (``isal``), then zlib; the results are identical.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gzip
import json
import math
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import _arrays

try:  # fastest whole-buffer gzip decoder
    import deflate as _deflate
except ImportError:  # pragma: no cover - optional speed-up
    _deflate = None
try:
    from isal import igzip as _igzip, igzip_threaded as _igzip_threaded
except ImportError:  # pragma: no cover - optional speed-up
    _igzip = _igzip_threaded = None

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class NiftiImage(NamedTuple):
    """A loaded NIfTI image; unpack it as ``data, affine, spacing, header = petfast.io.load(p)``."""

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple
    header: object  # nibabel.Nifti1Header or Nifti2Header


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def _gunzip(raw: bytes, path: Path) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        raise ValueError(f"{path}: not a gzip file (wrong magic bytes); a .nii.gz must be gzip-compressed")
    try:
        if _deflate is not None:
            try:
                out = _deflate.gzip_decompress(raw)
                # libdeflate stops after the first gzip member; the trailer's size tells whether there were more.
                if len(out) % 2**32 == int.from_bytes(raw[-4:], "little"):
                    return out
            except _deflate.DeflateError:
                pass  # the decoders below name the problem
        if _igzip is not None:
            return _igzip.decompress(raw)
        return gzip.decompress(raw)
    except Exception as e:  # each codec raises its own error type (zlib.error, IsalError, EOFError, ...)
        raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e


def _header_from(block: bytes, path: Path):
    import nibabel as nib

    if len(block) < 348:
        raise ValueError(f"{path}: file too short for a NIfTI header ({len(block)} bytes)")
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        size = cls.template_dtype.itemsize
        for order in ("<", ">"):
            if len(block) >= size and int(np.frombuffer(block[:4], order + "i4")[0]) == size:
                hdr = cls.from_fileobj(_BytesReader(block))
                if hdr["magic"] not in (b"n+1", b"ni1", b"n+2", b"ni2"):
                    raise ValueError(f"{path}: not a NIfTI file (magic {hdr['magic']!r})")
                return hdr
    raise ValueError(f"{path}: not a NIfTI file (unrecognised header size)")


class _BytesReader:
    """Minimal read-only file object over bytes, without BytesIO's copy."""

    def __init__(self, b):
        self._m = memoryview(b)
        self._pos = 0

    def read(self, n=-1):
        end = len(self._m) if n is None or n < 0 else min(len(self._m), self._pos + n)
        out = self._m[self._pos:end].tobytes()
        self._pos = end
        return out

    def seek(self, pos, whence=0):
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else len(self._m) + pos)
        return self._pos

    def tell(self):
        return self._pos


def _check_affine(affine, path) -> np.ndarray:
    from .resample import _affine

    return _affine(affine, f"{path}: the affine")


def read_json(path):
    """A JSON file's content; FileNotFoundError or ValueError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # what open() would give a new file


def atomic_write(path, write, overwrite: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``.

    Readers never see a half-written file, a failed write leaves nothing behind, and an existing
    file is replaced only with ``overwrite=True`` (FileExistsError otherwise)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would hide the result from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path, *, ndim: int | None = 3) -> NiftiImage:
    """Read a .nii or .nii.gz file. See the module notes for conventions.

    ``ndim=3`` (default) requires a 3-D image (a trailing axis of length 1 is dropped); pass
    ``ndim=None`` to accept any dimensionality. Errors name the file: ``FileNotFoundError``, or
    ``ValueError`` for wrong magic, corrupt or truncated data, a non-finite or singular affine, or the
    wrong number of dimensions.
    """
    path = Path(path)
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"{path}: expected a .nii or .nii.gz file")
    if _is_gzip(path):
        buf = _gunzip(path.read_bytes(), path)
        hdr = _header_from(buf[:540], path)
    else:
        with open(path, "rb") as f:
            hdr = _header_from(f.read(540), path)
        buf = None
    shape = tuple(int(s) for s in hdr.get_data_shape())
    dtype = hdr.get_data_dtype()
    offset = max(int(hdr.get_data_offset()), hdr.template_dtype.itemsize + 4 if hdr["magic"] in (b"n+1", b"n+2") else 0)
    count = math.prod(shape)
    need = offset + count * dtype.itemsize
    if buf is not None:
        if len(buf) < need:
            raise ValueError(f"{path}: truncated: the header promises {need} bytes, the file holds {len(buf)}")
        data = np.frombuffer(buf, dtype, count=count, offset=offset).reshape(shape, order="F")
        data.flags.writeable = False  # libdeflate's buffer is writable, the other decoders' are not
    else:
        if path.stat().st_size < need:
            raise ValueError(f"{path}: truncated: the header promises {need} bytes, the file holds {path.stat().st_size}")
        data = np.memmap(path, dtype, mode="r", offset=offset, shape=shape, order="F")
    slope, inter = hdr.get_slope_inter()
    if (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0):
        data = data.astype(np.float32) * np.float32(1.0 if slope is None else slope) + np.float32(inter or 0.0)
        data.flags.writeable = False
    if ndim is not None:
        while data.ndim > ndim and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != ndim:
            raise ValueError(f"{path}: expected a {ndim}-D image, got shape {data.shape}")
    affine = _check_affine(hdr.get_best_affine().astype(np.float64), path)
    spacing = tuple(float(z) for z in hdr.get_zooms()[:3])
    return NiftiImage(data, affine, spacing, hdr)


def load_ahead(groups, *, ndim: int | None = 3, depth: int | None = None):
    """For each group of paths (one case's files), yield a list of futures of their :func:`load`
    results while the next ``depth`` groups are read in the background: decompression releases the
    GIL, so on a cohort reading hides behind the caller's work on the current case. ``depth``
    defaults to petfast's CPU threads, at most 3 (a case's largest file, the PET, decompresses on one
    core: one group ahead left the second core of 2 idle in a read-bound job such as evaluation).
    ``future.result()`` returns the image or raises that file's read error, so that a caller can
    skip a bad case and go on to the next."""
    from . import get_num_threads

    depth = depth or max(1, min(3, get_num_threads()))
    groups = iter(groups)
    ahead = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(max(4, depth + 1)) as pool:

        def read_ahead():
            while len(ahead) < depth and (paths := next(groups, None)) is not None:
                ahead.append([pool.submit(load, p, ndim=ndim) for p in paths])

        read_ahead()
        while ahead:
            current = ahead.popleft()
            read_ahead()
            yield current


@contextlib.contextmanager
def write_behind(limit: int = 2):
    """A ``submit(fn, *args)`` that runs the writes of a cohort job on one background thread, in order,
    while the caller works on the next case. At most ``limit`` writes wait (``submit`` blocks on the
    oldest beyond that), so a slow disk holds back the job instead of filling memory; a failed write
    raises from the next ``submit`` (or when the block ends), so a full disk stops a long run at once."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = collections.deque()

        def submit(fn, *args):
            pending.append(pool.submit(fn, *args))
            while pending and (pending[0].done() or len(pending) > limit):
                pending.popleft().result()

        yield submit
        while pending:
            pending.popleft().result()


def save(path, data, affine=None, *, like=None, overwrite: bool = False) -> Path:
    """Write ``data`` (numpy array or torch tensor, indexed (i, j, k)) to .nii or .nii.gz atomically.

    ``affine`` is the voxel-to-world matrix in mm; with ``like`` (a :class:`NiftiImage` or a nibabel
    header) the other header fields (units, descriptions, qform/sform codes) are copied from it and
    its affine is used when ``affine`` is None. The dtype of ``data`` is kept. Returns the path.
    Raises ``FileExistsError`` when the file exists and ``overwrite`` is False.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"{path}: the file name must end in .nii or .nii.gz")
    if path.exists() and not overwrite:  # before any work; atomic_write checks again
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if _arrays._is_torch(data):
        data = data.detach().cpu().numpy()
    data = np.asanyarray(data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    header = like.header if isinstance(like, NiftiImage) else like
    if header is not None and not hasattr(header, "get_best_affine"):
        raise TypeError(f"like must be a petfast.io.load result or a nibabel NIfTI header, got {type(like).__name__}")
    if affine is None:
        if like is None:
            raise ValueError("save needs an affine (or like= an image whose affine to use)")
        affine = like.affine if isinstance(like, NiftiImage) else header.get_best_affine()
    affine = _check_affine(np.asarray(affine, np.float64), path)
    try:  # an explicit dtype: nibabel would refuse int64 without one, and "the dtype is kept"
        img = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None, dtype=data.dtype)
    except nib.spatialimages.HeaderDataError as e:
        raise TypeError(f"{path}: NIfTI has no data type for {data.dtype}; convert it first (e.g. np.float32 for "
                        "images, np.uint8 or np.int16 for label maps)") from e
    hdr = img.header
    hdr.set_data_shape(data.shape)
    hdr.set_slope_inter(np.nan, np.nan)  # raw values are written
    if header is None:
        hdr.set_xyzt_units("mm", "sec")
    img.update_header()
    hdr.set_data_offset(352)
    # Header, 4 bytes of "no extensions", then the voxels in Fortran order (zero-copy when they are).
    voxels = np.asfortranarray(data)
    payload = [hdr.binaryblock, b"\x00" * 4, memoryview(voxels.reshape(-1, order="F")).cast("B")]

    def write(raw):
        if _is_gzip(path):
            _write_gzip(raw, payload)
        else:
            for part in payload:
                raw.write(part)

    return atomic_write(path, write, overwrite)


def _write_gzip(fileobj, parts) -> None:
    if _igzip_threaded is not None:
        from . import get_num_threads

        # ISA-L on several threads writes one standard gzip member (blocks compressed in parallel).
        with _igzip_threaded.open(fileobj, "wb", compresslevel=1, threads=get_num_threads()) as f:
            for part in parts:
                f.write(part)
    else:
        with gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=1, mtime=0) as f:
            for part in parts:
                f.write(part)
