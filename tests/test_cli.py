"""The petfast command line: version, info, the demo (with atomic, non-overwriting output)."""
import subprocess
import sys

import numpy as np
import pytest

import petfast
from petfast.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and petfast.__version__ in capsys.readouterr().out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"cpu threads: {petfast.get_num_threads()}" in out
    assert ("yes" if petfast.cuda_built() else "no") in out


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "petfast", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "info", "predict", "evaluate", "phantom", "check", "train"):
        assert command in r.stdout


def test_planned_commands_say_so(capsys):
    assert main(["predict"]) == 2
    assert "not available" in capsys.readouterr().err


def test_demo_writes_nifti_and_never_overwrites(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "trilinear" in out and "cubic" in out
    ctres = nib.load(tmp_path / "CTres.nii.gz")
    ct = nib.load(tmp_path / "CT.nii.gz")
    assert ctres.shape == (256, 256, 150) and ct.shape == (512, 512, 300)
    data = np.asarray(ctres.dataobj)
    assert np.mean(data == -1024) > 0.05  # air fill outside the CT field of view
    # NIfTI stores affines in float32, so the reloaded grids differ by ~1e-7 mm: allow 0.05 HU.
    again = petfast.resample_ct_to_pet(np.asarray(ct.dataobj), ct.affine, ctres.shape, ctres.affine, order=3)
    np.testing.assert_allclose(data, again, atol=0.05)
    before = (tmp_path / "CTres.nii.gz").stat().st_mtime_ns
    assert main(["demo", "--out", str(tmp_path)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "CTres.nii.gz").stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CT.nii.gz", "CTres.nii.gz"]  # no temporary left
