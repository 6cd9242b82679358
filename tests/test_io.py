"""petfast.io against nibabel: round trips, header authority, atomic writes and bad files."""
import gzip

import nibabel as nib
import numpy as np
import pytest

import petfast
from petfast import io

DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64, np.uint16]


def las(spacing=(2.0364, 2.0364, 3.0), origin=(400.0, -300.0, -800.0)):
    a = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return a


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_load_matches_nibabel(tmp_path, rng, suffix, dtype):
    data = (rng.random((17, 13, 11)) * 200).astype(dtype)
    path = tmp_path / f"x{suffix}"
    nib.save(nib.Nifti1Image(data, las()), path)
    img = io.load(path)
    ref = nib.load(path)
    np.testing.assert_array_equal(img.data, np.asanyarray(ref.dataobj))
    assert img.data.dtype == np.dtype(dtype)  # no float64 upcast
    assert img.data.flags.f_contiguous  # on-disk order, no forced C copy
    assert not img.data.flags.writeable  # read-only whichever gzip decoder is installed
    np.testing.assert_array_equal(img.affine, ref.affine)
    assert img.spacing == pytest.approx(ref.header.get_zooms()[:3])
    data_, affine, spacing, header = img  # unpacks as documented
    assert header["magic"] in (b"n+1",)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_save_round_trip_read_by_nibabel(tmp_path, rng, suffix, dtype):
    data = (rng.random((9, 8, 7)) * 100).astype(dtype)
    path = io.save(tmp_path / f"y{suffix}", data, las())
    ref = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(ref.dataobj), data)
    assert ref.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_allclose(ref.affine, las(), atol=1e-4)
    again = io.load(path)
    np.testing.assert_array_equal(again.data, data)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int8, np.complex64])
def test_save_keeps_wide_and_rare_dtypes(tmp_path, dtype):  # nibabel refuses int64 unless asked by name
    data = np.arange(9 * 8 * 7).reshape(9, 8, 7).astype(dtype)
    path = io.save(tmp_path / "x.nii.gz", data, las())
    assert nib.load(path).get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(io.load(path).data, data)


def test_save_refuses_dtypes_nifti_lacks(tmp_path):
    with pytest.raises(TypeError, match="no data type for float16; convert it first"):
        io.save(tmp_path / "x.nii.gz", np.zeros((3, 3, 3), np.float16), las())
    assert not list(tmp_path.iterdir())


def test_save_c_ordered_and_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    data = np.ascontiguousarray(rng.random((6, 7, 8)).astype(np.float32))
    io.save(tmp_path / "c.nii.gz", data, las())
    io.save(tmp_path / "t.nii.gz", torch.from_numpy(data), las())
    for name in ("c.nii.gz", "t.nii.gz"):
        np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / name).dataobj), data)


def test_sform_qform_precedence(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), las())
    q = las(spacing=(1, 1, 1), origin=(1, 2, 3))
    img.set_qform(q, code=1)
    img.set_sform(las(), code=2)
    nib.save(img, tmp_path / "both.nii.gz")
    np.testing.assert_allclose(io.load(tmp_path / "both.nii.gz").affine, las(), atol=1e-4)  # sform wins
    img.set_sform(las(), code=0)
    nib.save(img, tmp_path / "qform.nii.gz")
    np.testing.assert_allclose(io.load(tmp_path / "qform.nii.gz").affine, q, atol=1e-4)  # then qform


def test_scaled_data_is_applied_like_nibabel(tmp_path):
    img = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), las())
    img.header.set_slope_inter(0.5, -3)
    nib.save(img, tmp_path / "s.nii.gz")
    got = io.load(tmp_path / "s.nii.gz").data
    np.testing.assert_allclose(got, np.asanyarray(nib.load(tmp_path / "s.nii.gz").dataobj), rtol=1e-6)
    assert got.dtype == np.float32


def test_like_copies_header_fields(tmp_path, rng):
    src = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), las())
    src.header["descrip"] = b"SUV body weight"
    nib.save(src, tmp_path / "src.nii.gz")
    ref = io.load(tmp_path / "src.nii.gz")
    io.save(tmp_path / "out.nii.gz", np.ones((4, 4, 4), np.uint8), like=ref)
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.header["descrip"] == b"SUV body weight" and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)


def test_no_overwrite_unless_asked_and_atomic(tmp_path):
    path = io.save(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.uint8), las())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        io.save(path, np.ones((3, 3, 3), np.uint8), las())
    assert path.read_bytes() == before
    io.save(path, np.ones((3, 3, 3), np.uint8), las(), overwrite=True)
    assert io.load(path).data.min() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]  # no temporary files left
    with pytest.raises(TypeError, match="like must be"):
        io.save(tmp_path / "c.nii.gz", np.zeros((3, 3, 3), np.uint8), like=str(path))  # a path is not a header
    with pytest.raises(FileNotFoundError, match="folder .*absent does not exist"):
        io.save(tmp_path / "absent" / "b.nii.gz", np.zeros((3, 3, 3), np.uint8), las())


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "_write_gzip", boom)
    with pytest.raises(RuntimeError):
        io.save(tmp_path / "b.nii.gz", np.zeros((3, 3, 3), np.uint8), las())
    assert list(tmp_path.iterdir()) == []


def test_multi_member_gzip_is_read(tmp_path, rng):
    data = rng.random((10, 10, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, las()), tmp_path / "plain.nii")
    raw = (tmp_path / "plain.nii").read_bytes()
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(io.load(tmp_path / "multi.nii.gz").data, data)


def test_bad_files(tmp_path, rng):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((20, 20, 20)).astype(np.float32), las()), good)
    raw = good.read_bytes()
    cases = {
        "truncated.nii.gz": (raw[: len(raw) // 2], "corrupt or truncated"),
        "corrupt.nii.gz": (raw[:30] + bytes(200) + raw[230:], "corrupt or truncated"),
        "notgzip.nii.gz": (b"hello world" * 50, "not a gzip"),
        "notnifti.nii.gz": (gzip.compress(bytes(600)), "not a NIfTI"),
        "short.nii": (gzip.decompress(raw)[:2000], "truncated"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as e:
            io.load(tmp_path / name)
        assert name in str(e.value)  # the error names the file
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "absent.nii.gz")
    with pytest.raises(ValueError, match=".nii"):
        io.load(tmp_path / "x.png")


def test_bad_affines_and_dims(tmp_path):
    singular = nib.Nifti1Header()
    singular.set_data_shape((4, 4, 4))
    singular.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=2)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None, singular), tmp_path / "singular.nii.gz")
    with pytest.raises(ValueError, match="singular"):
        io.load(tmp_path / "singular.nii.gz")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4, 4, 4))
    hdr.set_data_dtype(np.float32)
    hdr["srow_x"] = [np.nan, 0, 0, 0]
    hdr["sform_code"] = 2
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None, hdr), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match="NaN"):
        io.load(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(ValueError, match="3-D"):
        io.load(tmp_path / "4d.nii.gz")
    assert io.load(tmp_path / "4d.nii.gz", ndim=None).data.shape == (4, 4, 4, 2)
    with pytest.raises(ValueError, match="singular"):
        io.save(tmp_path / "s.nii.gz", np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="affine"):
        io.save(tmp_path / "s.nii.gz", np.zeros((2, 2, 2)))


def test_loaded_arrays_feed_the_kernels(tmp_path, rng):
    data = rng.integers(-1024, 2000, (20, 18, 16)).astype(np.int16)
    io.save(tmp_path / "ct.nii.gz", data, las((1, 1, 1)))
    img = io.load(tmp_path / "ct.nii.gz")
    out = petfast.resample(img.data, img.affine, (10, 9, 8), las((2, 2, 2)))
    ref = petfast.resample(np.ascontiguousarray(data), las((1, 1, 1)), (10, 9, 8), las((2, 2, 2)))
    np.testing.assert_array_equal(out, ref)


def test_load_ahead_yields_each_group_in_order_and_a_bad_one_raises_at_its_turn(tmp_path, rng):
    paths = []
    for i in range(3):
        paths.append(io.save(tmp_path / f"v{i}.nii.gz", np.full((4, 5, 6), i, np.int16), las()))
    groups = [[paths[0], paths[1]], [tmp_path / "absent.nii.gz"], [paths[2]]]
    it = io.load_ahead(groups)
    assert [int(f.result().data[0, 0, 0]) for f in next(it)] == [0, 1]
    (bad,) = next(it)
    with pytest.raises(FileNotFoundError, match="absent"):  # read in the background, raised at its turn
        bad.result()
    assert [int(f.result().data[0, 0, 0]) for f in next(it)] == [2]  # and the next group still comes
    assert next(it, None) is None
    assert list(io.load_ahead([])) == []


def test_load_ahead_reads_depth_groups_ahead(monkeypatch):
    import threading
    import time

    started, gate = [], threading.Event()

    def fake_load(path, ndim=3):
        started.append(path)
        gate.wait(10)
        return path

    monkeypatch.setattr(io, "load", fake_load)
    it = io.load_ahead([[f"g{g}"] for g in range(6)], depth=2)
    first = next(it)  # the caller holds group 0 while groups 1 and 2 are read, and no more
    deadline = time.monotonic() + 10
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(started) == ["g0", "g1", "g2"]
    gate.set()
    assert [f.result() for f in first] == ["g0"]
    assert [f.result() for group in it for f in group] == [f"g{g}" for g in range(1, 6)]


def test_write_behind_keeps_order_bounds_the_backlog_and_raises_early():
    import threading

    done, gate = [], threading.Event()

    def slow(i):
        gate.wait(5)
        done.append(i)

    with io.write_behind(limit=2) as submit:
        submit(slow, 0)
        submit(slow, 1)
        threading.Timer(0.2, gate.set).start()
        submit(slow, 2)  # a third waiting write: blocks until the oldest is written
        assert done[:1] == [0]
        submit(slow, 3)
    assert done == [0, 1, 2, 3]  # all written, in order, when the block ends

    def fail(i):
        if i == 1:
            raise OSError(28, "No space left on device")

    submitted = []
    with pytest.raises(OSError, match="No space left"):
        with io.write_behind(limit=2) as submit:
            for i in range(10):
                submit(fail, i)
                submitted.append(i)
    assert len(submitted) <= 3  # the failure surfaced within two more submits, not at the end
    with pytest.raises(OSError, match="No space left"):  # and when the block ends
        with io.write_behind(limit=2) as submit:
            submit(fail, 1)
