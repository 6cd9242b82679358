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
    from petfast import io

    args = ["demo", "--out", str(tmp_path), "--scale", "0.25", "--tracer", "psma"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trilinear" in out and "cubic" in out
    names = ["CT.nii.gz", "CTres.nii.gz", "SEG.nii.gz", "SUV.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # and no temporary files left
    ct, ctres, suv, seg = (io.load(tmp_path / n) for n in ("CT.nii.gz", "CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz"))
    assert ctres.data.shape == suv.data.shape == seg.data.shape != ct.data.shape  # CT on its own grid
    assert np.mean(ctres.data == -1024) > 0.05  # air fill outside the CT field of view
    # NIfTI stores affines in float32, so the reloaded grids differ by ~1e-7 mm: allow 0.05 HU.
    again = petfast.resample_ct_to_pet(ct.data, ct.affine, suv.data.shape, suv.affine, order=3)
    np.testing.assert_allclose(ctres.data, again, atol=0.05)
    before = (tmp_path / "CTres.nii.gz").stat().st_mtime_ns
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "CTres.nii.gz").stat().st_mtime_ns == before
    assert main(args + ["--overwrite"]) == 0
