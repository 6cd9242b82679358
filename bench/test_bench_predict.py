"""Inference: petfast.Predictor against nnU-Net's nnUNetPredictor, same weights, same case, same run.

CPU (what CI runs): arrays in, mask out, without mirroring, a tiny network on a small case (--full:
the 'small' preset on an 82 x 100 x 100 case). GPU (``-k gpu``, on a CUDA machine): the autoPET IV
baseline's network ('default' preset, 30.8 M parameters) on a whole-body 326 x 400 x 400 case, end to
end from files to files, the network stage alone, and a cohort of 4 such cases (cases per minute,
reading overlapped with inference; nnU-Net's run of it takes about 2 minutes).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import petfast  # noqa: E402
from petfast import io  # noqa: E402
from petfast.nnunet.model_folder import make_dataset_json, write_model_folder  # noqa: E402
from petfast.nnunet.networks import build_network  # noqa: E402
from petfast.nnunet.plans import AUTOPET_SPACING, preset_plans  # noqa: E402

from _benchdata import synced  # noqa: E402


def _model(path, preset, reader=None):
    plans = preset_plans(preset)
    if reader:  # nnU-Net's image reader; petfast reads NIfTI itself whatever this says
        plans["image_reader_writer"] = reader
    torch.manual_seed(0)
    return write_model_folder(path, plans, make_dataset_json(), {0: build_network(plans, "3d_fullres", 2, 2).state_dict()})


def _case(shape_zyx, seed=0):
    rng = np.random.default_rng(seed)
    ct = rng.normal(0, 300, shape_zyx).astype(np.float32)
    pet = np.abs(rng.normal(1, 3, shape_zyx)).astype(np.float32)
    return np.stack([ct, pet])


def _nnunet(model_dir, device, tta=False):
    nnpred = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    p = nnpred.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                               perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return p


def _nnunet_files(p, inputs, out):
    """nnU-Net's files-to-files run into a fresh ``out``."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    p.predict_from_files(str(inputs), str(out), save_probabilities=False, overwrite=True,
                         num_processes_preprocessing=2, num_processes_segmentation_export=2)


@pytest.fixture(scope="module")
def cpu_setup(full, tmp_path_factory):
    preset, shape = ("small", (82, 100, 100)) if full else ("tiny", (48, 64, 64))
    model = _model(tmp_path_factory.mktemp("model"), preset)
    return model, _case(shape)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_cpu_predict_petfast(benchmark, record, cpu_setup, precision):
    """fp32: nnU-Net's CPU precision; auto: what a user gets (bfloat16 on CPUs that have it)."""
    model, img = cpu_setup
    pred = petfast.Predictor.from_nnunet(model, tta=False, device="cpu", precision=precision)
    benchmark.group = "predict-cpu"
    benchmark.pedantic(pred.predict, (img.transpose(0, 3, 2, 1),), {"spacing": AUTOPET_SPACING[::-1]}, rounds=3)
    record(benchmark.group, f"petfast {precision}" + (f" ({pred.precision})" if precision == "auto" else ""))


def test_cpu_predict_nnunet(benchmark, record, cpu_setup):
    model, img = cpu_setup
    p = _nnunet(model, torch.device("cpu"))
    benchmark.group = "predict-cpu"
    benchmark.pedantic(p.predict_single_npy_array, (img, {"spacing": list(AUTOPET_SPACING)}, None, None, False),
                       rounds=3)
    record(benchmark.group, "nnU-Net predict_single_npy_array")


# --- GPU: whole body ----------------------------------------------------------------------------

WHOLE_BODY = (326, 400, 400)  # (z, y, x), autoPET's median FDG study


@pytest.fixture(scope="module")
def gpu_setup(tmp_path_factory):
    if not petfast.cuda_available():
        pytest.skip("needs the CUDA kernels and a CUDA device")
    root = tmp_path_factory.mktemp("wb")
    # NibabelIO: the GPU machine has no SimpleITK (its 53 MB wheel does not fit the transfer), so
    # bench/gpu/run.sh stubs it; nnU-Net reads these files with nibabel instead (bench/results/README.md).
    model = _model(root / "model", "default", reader="NibabelIO")
    img = _case(WHOLE_BODY)
    affine = np.diag([-AUTOPET_SPACING[2], AUTOPET_SPACING[1], AUTOPET_SPACING[0], 1.0])
    (root / "in").mkdir()
    io.save(root / "in" / "case_0000.nii.gz", img[0].T.astype(np.int16), affine)
    io.save(root / "in" / "case_0001.nii.gz", img[1].T, affine)
    return root, model, img


@pytest.mark.cuda
@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "tta"])
def test_gpu_files_petfast(benchmark, record, gpu_setup, tta):
    root, model, _ = gpu_setup
    pred = petfast.Predictor.from_nnunet(model, tta=tta, device="cuda")
    rows = []
    benchmark.group = f"predict-files-gpu-{'tta' if tta else 'no-tta'}"
    benchmark.pedantic(lambda: rows.append(pred.predict_files(root / "in", root / "out-petfast", overwrite=True,
                                                              progress=False)[0]), rounds=2, warmup_rounds=1)
    # Where the time goes (seconds, last round): reading, preprocessing, network, export, total.
    benchmark.extra_info["stages_s"] = {k: round(v, 3) for k, v in rows[-1].items() if isinstance(v, float)}
    record(benchmark.group, "petfast")


@pytest.mark.cuda
@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "tta"])
def test_gpu_files_nnunet(benchmark, record, gpu_setup, tta):
    root, model, _ = gpu_setup
    p = _nnunet(model, torch.device("cuda"), tta)
    benchmark.group = f"predict-files-gpu-{'tta' if tta else 'no-tta'}"
    benchmark.pedantic(_nnunet_files, (p, root / "in", root / "out-nnunet"), rounds=1)  # 26-37 s a round (anchors.md): one, after petfast's runs warmed the GPU
    record(benchmark.group, "nnU-Net predict_from_files")


@pytest.mark.cuda
def test_gpu_network_petfast(benchmark, record, gpu_setup):
    _, model, img = gpu_setup
    pred = petfast.Predictor.from_nnunet(model, tta=False, device="cuda")
    data = torch.from_numpy(img).cuda()
    benchmark.group = "sliding-window-gpu-no-tta"
    benchmark.pedantic(synced(pred._sliding_window), (data, False), rounds=3, warmup_rounds=1)
    record(benchmark.group, "petfast")


@pytest.mark.cuda
def test_gpu_network_nnunet(benchmark, record, gpu_setup):
    _, model, img = gpu_setup
    p = _nnunet(model, torch.device("cuda"))
    data = torch.from_numpy(img).cuda()
    benchmark.group = "sliding-window-gpu-no-tta"
    benchmark.pedantic(synced(p.predict_sliding_window_return_logits), (data,), rounds=3, warmup_rounds=1)
    record(benchmark.group, "nnU-Net predict_sliding_window_return_logits")


# --- GPU: a cohort, reading overlapped with inference ---------------------------------------------

COHORT = 4


@pytest.fixture(scope="module")
def gpu_cohort(gpu_setup):
    """COHORT copies (hard links) of the whole-body case, as separate cases of one input folder."""
    import os

    root, model, _ = gpu_setup
    folder = root / "cohort"
    folder.mkdir(exist_ok=True)
    for i in range(COHORT):
        for c in range(2):
            target = folder / f"case{i}_{c:04d}.nii.gz"
            if not target.exists():
                os.link(root / "in" / f"case_{c:04d}.nii.gz", target)
    return folder, model


@pytest.mark.cuda
def test_gpu_cohort_petfast(benchmark, record, gpu_cohort):
    folder, model = gpu_cohort
    pred = petfast.Predictor.from_nnunet(model, tta=False, device="cuda")
    benchmark.group = f"predict-cohort-gpu-{COHORT}-cases-no-tta"
    benchmark.pedantic(lambda: pred.predict_files(folder, folder.parent / "cohort-petfast", overwrite=True,
                                                  progress=False), rounds=2, warmup_rounds=1)
    benchmark.extra_info["cases_per_minute"] = COHORT * 60 / benchmark.stats.stats.median
    record(benchmark.group, "petfast")


@pytest.mark.cuda
def test_gpu_cohort_nnunet(benchmark, record, gpu_cohort):
    folder, model = gpu_cohort
    p = _nnunet(model, torch.device("cuda"))
    benchmark.group = f"predict-cohort-gpu-{COHORT}-cases-no-tta"
    benchmark.pedantic(_nnunet_files, (p, folder, folder.parent / "cohort-nnunet"), rounds=1)  # about 26 s a case (anchors.md)
    benchmark.extra_info["cases_per_minute"] = COHORT * 60 / benchmark.stats.stats.median
    record(benchmark.group, "nnU-Net predict_from_files")
