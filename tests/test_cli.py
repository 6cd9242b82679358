"""The petfast command line: version, info, the demo (with atomic, non-overwriting output), the
process settings it makes."""
import os
import platform
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
    assert "nifti gzip: read libdeflate, write ISA-L" in out  # both are dependencies of the package
    torch = pytest.importorskip("torch")
    assert f"torch {torch.__version__}; CPU inference precision 'auto': " in out


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "petfast", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "info", "predict", "evaluate", "phantom", "check", "train"):
        assert command in r.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_the_command_keeps_freed_memory_unless_the_user_tuned_malloc():
    # A 64 MB block freed and allocated again: glibc maps it afresh (16,384 page faults) unless the
    # command's setting keeps the freed block. A bytearray, as torch's tensors, takes 4 kB pages
    # (numpy asks for huge pages).
    script = """
import contextlib, io, resource, sys
from petfast.cli import _keep_freed_memory, main
mode = sys.argv[1]
if mode == "keep":
    _keep_freed_memory()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    if mode == "command":  # the program (main() reads sys.argv), about to run a network on the CPU
        sys.argv = ["petfast", "predict", "-m", "nowhere", "-i", "nowhere", "-o", "out", "--device", "cpu"]
        main()
    elif mode == "command-io":  # the program, with no network to run
        sys.argv = ["petfast", "info"]
        main()
    elif mode == "library":  # a caller's process: main(argv)
        main(["predict", "-m", "nowhere", "-i", "nowhere", "-o", "out", "--device", "cpu"])
bytearray(1 << 26)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
bytearray(1 << 26)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def faults(mode, env):
        return int(subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                                  check=True).stdout)

    assert faults("default", clean) > 10000
    assert faults("keep", clean) < 1000
    assert faults("keep", {**clean, "MALLOC_ARENA_MAX": "4"}) > 10000  # the user's own malloc settings win
    assert faults("command", clean) < 1000  # `petfast predict` on the CPU sets it
    assert faults("command-io", clean) > 10000  # commands that only read files do not: it slowed them
    assert faults("library", clean) > 10000  # main(argv) from a caller's process leaves the allocator alone


def test_demo_runs_the_whole_pipeline_and_never_overwrites(tmp_path, capsys):
    from petfast import io

    args = ["demo", "--out", str(tmp_path), "--tracer", "fdg", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "CTres" in out and "lesions found" in out and "Dice" in out and "not for clinical use" in out
    names = ["CT.nii.gz", "CTres.nii.gz", "PRED.nii.gz", "SEG.nii.gz", "SUV.nii.gz", "lesions.csv", "mip.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # and no temporary files left
    ct, ctres, suv, seg, pred = (io.load(tmp_path / n) for n in ("CT.nii.gz", "CTres.nii.gz", "SUV.nii.gz",
                                                                  "SEG.nii.gz", "PRED.nii.gz"))
    assert ctres.data.shape == suv.data.shape == seg.data.shape == pred.data.shape != ct.data.shape
    assert pred.data.dtype == np.uint8 and set(np.unique(pred.data)) <= {0, 1}
    assert np.mean(ctres.data == -1024) > 0.05  # air fill outside the CT field of view
    # The summary's scores are autoPET's metrics of the files written.
    m = petfast.metrics.autopet(seg.data, pred.data, float(np.prod(suv.spacing)) / 1000)
    assert f"Dice {m['dice']:.3f}, false positive volume {m['fp_volume_ml']:.2f} ml" in out
    assert np.any(pred.data)  # the shipped model finds lesions in this study
    rows = (tmp_path / "lesions.csv").read_text().splitlines()
    assert rows[0].startswith("lesion,volume_ml") and len(rows) - 1 == petfast.label(pred.data > 0, 18)[1]
    assert (tmp_path / "mip.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (tmp_path / "CTres.nii.gz").stat().st_mtime_ns
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "CTres.nii.gz").stat().st_mtime_ns == before


def test_demo_picks_a_fresh_folder(tmp_path, monkeypatch):
    from petfast.cli import _demo_dir

    monkeypatch.chdir(tmp_path)
    assert _demo_dir(None).name == "petfast-demo"
    (tmp_path / "petfast-demo").mkdir()
    (tmp_path / "petfast-demo-2").mkdir()
    assert _demo_dir(None).name == "petfast-demo-3"
    assert _demo_dir(str(tmp_path / "mine")) == tmp_path / "mine"


def test_png_writer(tmp_path):
    import struct
    import zlib

    from petfast._png import write_png

    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    raw = write_png(tmp_path / "a.png", img).read_bytes()
    assert struct.unpack(">II", raw[16:24]) == (7, 5)  # IHDR width, height
    n = struct.unpack(">I", raw[33:37])[0]
    rows = np.frombuffer(zlib.decompress(raw[41:41 + n]), np.uint8).reshape(5, 1 + 7 * 3)
    assert np.all(rows[:, 0] == 0) and np.array_equal(rows[:, 1:].reshape(5, 7, 3), img)
    with pytest.raises(FileExistsError):
        write_png(tmp_path / "a.png", img)
