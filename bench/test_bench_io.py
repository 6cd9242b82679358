"""NIfTI I/O: petfast.io against nibabel on a whole-body int16 CT (.nii.gz)."""
import numpy as np
import pytest

from petfast import io

from _benchdata import synthetic_ct, whole_body_grids

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, full):
    ct_shape, ct_affine, _, _ = whole_body_grids(full)
    path = tmp_path_factory.mktemp("io") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(synthetic_ct(ct_shape), ct_affine), path)  # as nibabel writes it (level 1)
    return path


def test_load_petfast(benchmark, record, ct_file):
    benchmark.group = "nifti-load-ct"
    img = benchmark(io.load, ct_file)
    assert img.data.dtype == np.int16
    record(benchmark.group, "petfast")


def test_load_nibabel(benchmark, record, ct_file):
    benchmark.group = "nifti-load-ct"
    benchmark(lambda: np.asanyarray(nib.load(ct_file).dataobj))
    record(benchmark.group, "nibabel dataobj")


def test_save_petfast(benchmark, record, ct_file, tmp_path):
    img = io.load(ct_file)
    benchmark.group = "nifti-save-ct"
    benchmark(io.save, tmp_path / "out.nii.gz", img.data, img.affine, overwrite=True)
    record(benchmark.group, "petfast")


def test_save_nibabel(benchmark, record, ct_file, tmp_path):
    img = nib.load(ct_file)
    data = np.asanyarray(img.dataobj)
    benchmark.group = "nifti-save-ct"
    benchmark(nib.save, nib.Nifti1Image(data, img.affine), tmp_path / "out.nii.gz")
    record(benchmark.group, "nibabel save (default level 1)")
