"""torch is optional at run time (README): every numpy path and the commands that need no network work
without it, and those that do say so. Each check runs in a fresh interpreter where `import torch`
fails, as on a machine that never installed it. Also: the extension links neither libtorch nor the
CUDA runtime, so it imports on machines with no GPU driver."""
import shutil
import subprocess
import sys
import textwrap

import pytest

import petfast

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def run_without_torch(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_numpy_api_without_torch(tmp_path):
    r = run_without_torch("""
        import numpy as np, petfast
        from petfast import io, metrics, patches, phantom, quant
        st = phantom.make_study("fdg", seed=1, scale=0.25)
        ctres = petfast.resample_ct_to_pet(st.ct, st.ct_affine, st.pet.shape, st.pet_affine, order=3)
        assert ctres.shape == st.pet.shape and ctres.dtype == np.float32
        mask = st.label > 0
        labels, n = petfast.label(mask, connectivity=18)
        _, n2, table = petfast.label_with_stats(mask, st.pet, (4, 4, 4), connectivity=18)
        assert n == n2 > 0 and table["voxels"].sum() == mask.sum()
        assert metrics.autopet(mask, mask, 0.064)["dice"] == 1.0
        assert quant.lesions(st.pet, mask, (4, 4, 4))["study"]["lesion_count"] == n
        vol = st.pet[None].astype(np.float32)
        out = patches.sliding_window(vol, lambda x: np.concatenate([-x, x], axis=1), (32, 32, 32), num_outputs=2)
        assert out.shape == st.pet.shape and isinstance(out, np.ndarray)
        sampler = patches.PatchSampler([(vol, st.label)], patch_size=(32, 32, 32), batch_size=2, seed=0)
        images, _ = next(sampler)
        assert images.shape == (2, 1, 32, 32, 32)
        io.save("ctres.nii.gz", ctres, st.pet_affine)
        assert (io.load("ctres.nii.gz")[0] == ctres).all()
        assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
        try:
            petfast.Predictor
        except ImportError as e:
            assert "needs torch" in str(e), e
        else:
            raise AssertionError("petfast.Predictor without torch")
        print("ok")
    """, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_commands_without_torch(tmp_path):
    r = run_without_torch("""
        from petfast import cli
        assert cli.main(["phantom", "--out", "ds", "--cases", "5", "--scale", "0.2", "--quiet"]) == 0
        assert cli.main(["check", "ds", "--quiet"]) == 0
        assert cli.main(["evaluate", "--gt", "ds/labelsTr", "--pred", "ds/labelsTr", "--out", "r.csv", "--quiet"]) == 0
        assert cli.main(["info"]) == 0
        for command in (["demo", "--out", "demo"], ["predict", "-m", "m", "-i", "ds/imagesTr", "-o", "p"],
                        ["train", "ds", "-o", "m"]):
            assert cli.main(command) == 2, command
        print("ok")
    """, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    assert r.stderr.count("needs torch, which is not installed") == 3, r.stderr[-3000:]
    assert "torch: not installed (needed by predict, train and demo)" in r.stdout  # petfast info
    assert not (tmp_path / "demo").exists() and not (tmp_path / "p").exists() and not (tmp_path / "m").exists()


@pytest.mark.skipif(not shutil.which("readelf"), reason="needs readelf (binutils)")
def test_extension_links_neither_torch_nor_the_cuda_runtime():
    r = subprocess.run(["readelf", "-d", petfast._C.__file__], capture_output=True, text=True, check=True)
    needed = [line.split("[")[1].rstrip("]") for line in r.stdout.splitlines() if "(NEEDED)" in line]
    assert needed and "libc.so.6" in needed, r.stdout
    banned = ("torch", "c10", "cudart", "libcuda.", "cublas", "cudnn", "python")
    assert not [lib for lib in needed if any(b in lib for b in banned)], needed
