"""petfast.Predictor against nnU-Net's own nnUNetPredictor on the same model folder and cases.

Two references: stock nnU-Net, which accumulates tiles in float16 (masks must agree to Dice >= 0.995),
and nnU-Net with its accumulators switched to float32, which isolates everything else
(preprocessing, tiles, Gaussian, mirroring, fold averaging, resampling, export): that must agree
to float32 rounding.
"""
import functools
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import petfast  # noqa: E402
from petfast import io  # noqa: E402
from petfast.nnunet.model_folder import make_dataset_json, write_model_folder  # noqa: E402
from petfast.nnunet.networks import build_network  # noqa: E402
from petfast.nnunet.plans import make_plans  # noqa: E402

from _testdata import SHARED  # noqa: E402

PATCH = (32, 32, 32)
SPACING = (3.0, 2.0364201068878174, 2.0364201068878174)  # autoPET's, (z, y, x)


def tiny_plans(**kw):
    return make_plans(PATCH, SPACING, [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], **kw)


def write_model(path, plans, dataset_json=None, folds=(0, 1), seed=0):
    dataset_json = dataset_json or make_dataset_json()
    torch.manual_seed(seed)
    n_in, n_out = len(dataset_json["channel_names"]), len(dataset_json["labels"])
    weights = {f: build_network(plans, "3d_fullres", n_in, n_out).state_dict() for f in folds}
    return write_model_folder(path, plans, dataset_json, weights)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("model"), tiny_plans())


def make_case(seed, shape_zyx=(36, 44, 40), channels=2):
    """CT-like and PET-like channels (z, y, x) with a zero border, so the nonzero crop matters."""
    rng = np.random.default_rng(seed)
    img = np.stack([rng.normal(0, 300, shape_zyx), np.abs(rng.normal(1, 3, shape_zyx))][:channels]
                   + [rng.normal(size=shape_zyx) for _ in range(channels - 2)]).astype(np.float32)
    img[:, :, :3] = 0
    img[:, -2:] = 0
    return img


def nnunet_predict(model_dir, img_zyx, spacing_zyx, folds, tta, float32_accumulation=False):
    nnpred = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    p = nnpred.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                               perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(model_dir), use_folds=folds, checkpoint_name="checkpoint_final.pth")
    with pytest.MonkeyPatch.context() as mp:
        if float32_accumulation:  # nnU-Net hard-codes float16 accumulators and Gaussian
            mp.setattr(torch, "half", torch.float32)
            mp.setattr(nnpred, "compute_gaussian",
                       functools.partial(nnpred.compute_gaussian.__wrapped__, dtype=torch.float32))
        seg, prob = p.predict_single_npy_array(img_zyx.copy(), {"spacing": list(spacing_zyx)}, None, None, True)
    return seg, prob


def petfast_predict(model_dir, img_zyx, spacing_zyx, folds, tta, **kw):
    # float32 as nnU-Net on the CPU ('auto' is bfloat16 on CPUs with native bfloat16)
    pred = petfast.Predictor.from_nnunet(model_dir, folds=folds, tta=tta, device="cpu", precision="fp32", **kw)
    mask, prob = pred.predict(img_zyx.transpose(0, 3, 2, 1), spacing=spacing_zyx[::-1], probabilities=True)
    # Without probabilities two classes resize one difference map instead of both logits: same mask
    # (but for exact ties).
    alone = pred.predict(img_zyx.transpose(0, 3, 2, 1), spacing=spacing_zyx[::-1])
    assert np.mean(alone == mask) > 0.9999
    return mask.transpose(2, 1, 0), prob.transpose(0, 3, 2, 1)


def dice(a, b):
    a, b = a == 1, b == 1
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


CASES = [pytest.param(SPACING, id="no-resampling"), pytest.param((2.5, 2.4, 1.7), id="resampled")]


@pytest.mark.parametrize("spacing", CASES)
@pytest.mark.parametrize("folds,tta", [((0,), False), ((0, 1), True)])
def test_matches_nnunet_with_float32_accumulation(model_dir, spacing, folds, tta):
    img = make_case(1)
    seg, prob = nnunet_predict(model_dir, img, spacing, folds, tta, float32_accumulation=True)
    mask, ours = petfast_predict(model_dir, img, spacing, folds, tta)
    print(f"largest probability difference {np.abs(ours - prob).max():.2e}")
    assert mask.dtype == np.uint8 and mask.shape == img.shape[1:]
    assert np.abs(ours - prob).max() < 1e-4
    assert np.mean(mask == seg) > 0.9999
    assert 0.05 < np.mean(seg == 1) < 0.95  # the network is not trivially constant


@pytest.mark.parametrize("spacing", CASES)
@pytest.mark.parametrize("folds,tta", [((0,), False), ((0,), True), ((0, 1), False), ((0, 1), True)])
def test_matches_stock_nnunet(model_dir, spacing, folds, tta):
    img = make_case(2)
    seg, prob = nnunet_predict(model_dir, img, spacing, folds, tta)
    mask, ours = petfast_predict(model_dir, img, spacing, folds, tta)
    diff = np.abs(ours - prob)
    print(f"Dice {dice(mask, seg):.5f}, probabilities: largest difference {diff.max():.3f}, "
          f"99th percentile {np.percentile(diff, 99):.2e} (nnU-Net accumulates in float16)")
    assert dice(mask, seg) >= 0.995
    assert np.percentile(diff, 99) < 2e-2


def test_nonzero_bbox_against_numpy(rng):
    from petfast.nnunet import preprocess as pre

    def reference(a):
        hit = np.argwhere((a != 0).any(0))
        if len(hit) == 0:
            return [(0, n) for n in a.shape[1:]]
        return [(int(lo), int(hi) + 1) for lo, hi in zip(hit.min(0), hit.max(0))]

    cases = [np.zeros((2, 6, 7, 8), np.float32), rng.normal(size=(2, 6, 7, 8)).astype(np.float32)]
    for box in [(slice(0, 6), slice(1, 7), slice(0, 8)), (slice(2, 3), slice(4, 5), slice(7, 8)),
                (slice(0, 6), slice(0, 7), slice(3, 8))]:
        a = np.zeros((2, 6, 7, 8), np.float32)
        a[(1,) + box] = rng.uniform(1, 2, size=[b.stop - b.start for b in box])
        cases.append(a)
    with_faces = rng.normal(size=(2, 6, 7, 8)).astype(np.float32)
    with_faces[:, 2:4] = 0  # zero slices inside, every face nonzero
    cases.append(with_faces)
    for a in cases:
        got = pre.nonzero_bbox(torch.from_numpy(a))
        assert [(b.start, b.stop) for b in got] == reference(a)


def test_preprocessing_matches_nnunet(tmp_path):
    """Crop, CT and masked z-score normalisation, cubic resampling: nnU-Net's DefaultPreprocessor."""
    pp = pytest.importorskip("nnunetv2.preprocessing.preprocessors.default_preprocessor")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from petfast.nnunet import preprocess as pre

    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [False, True]
    img = make_case(3)
    img[:, 10:14, 10:14, 10:14] = 0  # a hole inside the nonzero region: filled for the z-score mask
    spacing = (2.5, 2.4, 1.7)
    pm = PlansManager(plans)
    ref, _, props = pp.DefaultPreprocessor(verbose=False).run_case_npy(
        img.copy(), None, {"spacing": list(spacing)}, pm, pm.get_configuration("3d_fullres"), make_dataset_json())
    pred = petfast.Predictor(
        [build_network(plans, "3d_fullres", 2, 2)], plans, make_dataset_json(), device="cpu")
    data, sp, box, shape = pred._preprocess([torch.from_numpy(c.T) for c in img], spacing[::-1])
    assert [[b.start, b.stop] for b in box] == [list(b) for b in props["bbox_used_for_cropping"]]
    data = pre.resize_image(data, pre.new_shape(data.shape[1:], sp, SPACING))
    assert data.shape == ref.shape
    np.testing.assert_allclose(data.numpy(), ref, atol=1e-4, rtol=1e-5)


def test_every_normalisation_scheme_matches_nnunet(rng):
    norm = pytest.importorskip("nnunetv2.preprocessing.normalization.default_normalization_schemes")
    from petfast.nnunet import preprocess as pre

    props = {"0": {"percentile_00_5": -500.0, "percentile_99_5": 900.0, "mean": 60.0, "std": 210.0}}
    img = rng.uniform(-1000, 1500, (1, 9, 10, 11)).astype(np.float32)
    rgb = rng.uniform(0, 255, (1, 9, 10, 11)).astype(np.float32)
    for scheme, x in (("CTNormalization", img), ("ZScoreNormalization", img), ("RescaleTo01Normalization", img),
                      ("RGBTo01Normalization", rgb), ("NoNormalization", img)):
        ref = getattr(norm, scheme)(use_mask_for_norm=False, intensityproperties=props["0"]).run(x[0].copy())
        ours = pre.normalize(torch.from_numpy(x.copy()), [scheme], [False], props)[0].numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=scheme)
    with pytest.raises(ValueError, match="leave \\[0, 255\\]"):
        pre.normalize(torch.from_numpy(img.copy()), ["RGBTo01Normalization"], [False], props)
    with pytest.raises(ValueError, match="unknown normalisation scheme 'Histogram'"):
        pre.normalize(torch.from_numpy(img.copy()), ["Histogram"], [False], props)
    with pytest.raises(ValueError, match="no foreground intensity"):
        pre.normalize(torch.from_numpy(img.copy()), ["CTNormalization"], [False], {})
    with pytest.raises(ValueError, match="2 normalisation schemes for 1 channels"):
        pre.normalize(torch.from_numpy(img.copy()), ["CTNormalization", "NoNormalization"], [False, False], props)


def test_transposed_plans_match_nnunet(tmp_path):
    plans = tiny_plans()
    plans["transpose_forward"], plans["transpose_backward"] = [1, 2, 0], [2, 0, 1]
    model = write_model(tmp_path / "model", plans, folds=(0,))
    img = make_case(4, (30, 44, 36))
    spacing = (2.5, 2.4, 1.7)
    seg, prob = nnunet_predict(model, img, spacing, (0,), False, float32_accumulation=True)
    mask, ours = petfast_predict(model, img, spacing, (0,), False)
    assert np.abs(ours - prob).max() < 1e-4 and np.mean(mask == seg) > 0.9999


@pytest.mark.parametrize("model_spacing,spacing", [
    pytest.param(SPACING, (6.0, 1.5, 1.5), id="thick-slice-input"),
    pytest.param((5.0, 1.2, 1.2), (2.5, 2.4, 1.7), id="thick-slice-model"),
])
def test_anisotropic_resampling_matches_nnunet(tmp_path, model_spacing, spacing):
    """A spacing ratio above 3 (the input's, else the model's): nnU-Net resizes each slice in-plane
    (cubic for the image, linear for the logits, each slice clipped to its own range) and takes the
    nearest slice along the thick axis."""
    plans = make_plans(PATCH, model_spacing, [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    model = write_model(tmp_path / "model", plans, folds=(0,))
    img = make_case(11, (20, 44, 40))
    seg, prob = nnunet_predict(model, img, spacing, (0,), True, float32_accumulation=True)
    mask, ours = petfast_predict(model, img, spacing, (0,), True)
    assert np.abs(ours - prob).max() < 1e-4 and np.mean(mask == seg) > 0.9999
    assert 0.05 < np.mean(seg == 1) < 0.95


@pytest.mark.skipif(not (SHARED / "nnunet_plans").is_dir(), reason="../shared/data/nnunet_plans not present")
def test_parity_on_plans_derived_from_the_autopet4_baseline(tmp_path):
    """The real autoPET IV plans (4 channels: CT, then z-scored PET and two masks), shrunk to a tiny network."""
    plans = json.loads((SHARED / "nnunet_plans" / "autopet4_task1_baseline_plans.json").read_text())
    dataset_json = json.loads((SHARED / "nnunet_plans" / "autopet4_task1_baseline_dataset.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    conf["patch_size"] = list(PATCH)
    kw = conf["architecture"]["arch_kwargs"]
    kw.update(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
              strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2] * 3, n_conv_per_stage_decoder=[2] * 2)
    model = write_model(tmp_path / "model", plans, dataset_json, folds=(0,))
    img = make_case(5, channels=len(dataset_json["channel_names"]))
    spacing = (2.0, 2.73, 2.73)  # a GE Discovery 690 PSMA grid: resampled to the plans' spacing
    seg, prob = nnunet_predict(model, img, spacing, (0,), True, float32_accumulation=True)
    mask, ours = petfast_predict(model, img, spacing, (0,), True)
    assert np.abs(ours - prob).max() < 1e-4 and np.mean(mask == seg) > 0.9999


# --- interfaces ----------------------------------------------------------------------------------

def test_torch_and_channel_list_inputs(model_dir):
    img = make_case(6).transpose(0, 3, 2, 1)
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    ref = pred.predict(img, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert isinstance(ref, np.ndarray) and ref.shape == img.shape[1:]
    assert set(pred.timings) == {"preprocess", "network", "export"}
    out = pred.predict([torch.from_numpy(img[0]), torch.from_numpy(img[1]).double()], spacing=(2.0, 2.0, 3.0))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), ref)
    frozen = img.copy()
    frozen.flags.writeable = False  # as petfast.io.load returns them
    np.testing.assert_array_equal(pred.predict(frozen, spacing=(2.0, 2.0, 3.0)), ref)
    np.testing.assert_array_equal(frozen, img)  # the input is never modified


def test_thin_and_single_voxel_images(model_dir):
    # One voxel along an axis whose spacing is under half the model's: nnU-Net's new shape is 0 there
    # (and its resize fails); petfast keeps 1 voxel and returns the input's shape.
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    fine = [s / 4 for s in pred.spacing[::-1]]  # (i, j, k) spacing a quarter of the model's
    img = make_case(8).transpose(0, 3, 2, 1)
    for part in (img[:, :, :, :1], img[:, :1, :1, :1]):
        out = pred.predict(part, spacing=fine)
        assert out.shape == part.shape[1:] and out.dtype == np.uint8


def test_step_and_batch_size_do_not_change_the_result(model_dir):
    img = make_case(7).transpose(0, 3, 2, 1)
    a = petfast.Predictor.from_nnunet(model_dir, tta=True, batch_size=1, device="cpu", precision="fp32").predict(
        img, spacing=(2, 2, 3))
    b = petfast.Predictor.from_nnunet(model_dir, tta=True, batch_size=16, device="cpu", precision="fp32").predict(
        img, spacing=(2, 2, 3))
    assert np.mean(a == b) > 0.9999


def test_cpu_batch_size_follows_the_patch(model_dir):
    """The CPU default puts about 600k voxels through each forward call: small patches go in bigger
    batches (per-call overhead), the default model's 48x80x80 in pairs."""
    tiny = petfast.Predictor.from_nnunet(model_dir, device="cpu")
    assert np.prod(tiny.patch_size) <= 32**3 and tiny.batch_size >= 16
    assert petfast.Predictor.default(device="cpu").batch_size == 2
    assert petfast.Predictor.from_nnunet(model_dir, device="cpu", batch_size=3).batch_size == 3


def test_the_network_stage_runs_without_autograd(model_dir, monkeypatch):
    """The benchmarks (and bench/gpu/network_ab.py's fused-norm decision) time _sliding_window
    directly: it must not track gradients, or the fused norm (inference only) would never run."""
    from petfast.nnunet import networks

    calls = []
    real = networks.instance_norm_act
    monkeypatch.setattr(networks, "instance_norm_act", lambda *a, **k: calls.append(1) or real(*a, **k))
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    data = torch.from_numpy(make_case(33))
    seg, logits = pred._sliding_window(data, True)
    assert calls and not logits.requires_grad and seg.shape == data.shape[1:]


def test_non_finite_logits_warn(model_dir, monkeypatch):
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu", precision="fp32", batch_size=1)
    img = make_case(34).transpose(0, 3, 2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite logits: no warning
        clean = pred.predict(img, spacing=(2.0364201068878174, 2.0364201068878174, 3.0))
    real, calls = pred._forward, []

    def overflowing(tiles):  # as float16 overflow would, in one batch of several: an infinite logit
        y = real(tiles)
        if len(calls) == 1:
            y[0, 0, 0, 0, 0] = float("inf")
        calls.append(1)
        return y

    monkeypatch.setattr(pred, "_forward", overflowing)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pred.predict(img, spacing=(2.0364201068878174, 2.0364201068878174, 3.0))
    assert len(calls) > 1 and clean.shape == img.shape[1:]
    assert [str(w.message) for w in seen] == [
        "the network gave non-finite logits (NaN or infinite; precision 'fp32'), so the mask is unreliable where "
        "they fell; predict with precision='fp32' (--precision fp32) to tell float16 overflow from broken weights"]


def test_cpu_precision(model_dir, monkeypatch):
    # 'auto' on the CPU: bfloat16 where the CPU has it natively, else float32 (nnU-Net's CPU path).
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr("petfast.predictor.native_bf16_cpu", lambda: native)
        assert petfast.Predictor.from_nnunet(model_dir, device="cpu").precision == expected
    img = make_case(9).transpose(0, 3, 2, 1)
    m32, p32 = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu", precision="fp32").predict(
        img, spacing=(2, 2, 3), probabilities=True)
    m16, p16 = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu", precision="bf16").predict(
        img, spacing=(2, 2, 3), probabilities=True)
    # bfloat16 keeps 8 bits of mantissa: probabilities move by about 1e-2, masks by a few voxels.
    assert p16.dtype == np.float32 and np.abs(p16 - p32).max() < 0.05 and np.mean(m16 == m32) > 0.99


@pytest.mark.cuda
def test_cuda_matches_cpu(model_dir):
    img = make_case(8, (60, 70, 64)).transpose(0, 3, 2, 1)
    cpu = petfast.Predictor.from_nnunet(model_dir, folds=(0, 1), device="cpu", precision="fp32")
    gpu = petfast.Predictor.from_nnunet(model_dir, folds=(0, 1), device="cuda", precision="fp32")
    for spacing in ((2.0, 2.0, 3.0), (1.7, 2.4, 2.5)):
        m_cpu, p_cpu = cpu.predict(img, spacing=spacing, probabilities=True)
        m_gpu, p_gpu = gpu.predict(torch.from_numpy(img).cuda(), spacing=spacing, probabilities=True)
        agree, diff = np.mean(m_gpu.cpu().numpy() == m_cpu), np.abs(p_gpu.cpu().numpy() - p_cpu).max()
        assert m_gpu.is_cuda and agree > 0.9999 and diff < 1e-3, f"spacing {spacing}: {agree}, {diff}"
    half = petfast.Predictor.from_nnunet(model_dir, folds=(0, 1), device="cuda")  # fp16 autocast, as nnU-Net
    assert dice(half.predict(img, spacing=(2.0, 2.0, 3.0)), cpu.predict(img, spacing=(2.0, 2.0, 3.0))) > 0.99


# --- files ---------------------------------------------------------------------------------------

AFFINE = np.diag([-2.0364201068878174, 2.0364201068878174, 3.0, 1.0])  # autoPET's LAS grids


def write_nnunet_case(folder, case, img_ijk, affine=AFFINE):
    folder.mkdir(parents=True, exist_ok=True)
    for c, ch in enumerate(img_ijk):
        io.save(folder / f"{case}_{c:04d}.nii.gz", ch, affine)


def test_predict_files_nnunet_folder(model_dir, tmp_path):
    imgs = {f"fdg_{i}_study": make_case(10 + i, (30 + i, 40, 36)).transpose(0, 3, 2, 1) for i in range(3)}
    for case, img in imgs.items():
        write_nnunet_case(tmp_path / "in", case, [img[0].astype(np.int16), img[1]])
    pred = petfast.Predictor.from_nnunet(model_dir, folds=(0, 1), tta=False, device="cpu")
    rows = pred.predict_files(tmp_path / "in", tmp_path / "out", probabilities=True, lesions="csv", progress=False)
    assert [r["case"] for r in rows] == sorted(imgs)
    for case, img in imgs.items():
        out = io.load(tmp_path / "out" / f"{case}.nii.gz")
        np.testing.assert_allclose(out.affine, AFFINE)
        assert out.data.dtype == np.uint8
        expected = pred.predict([img[0].astype(np.int16), img[1]], AFFINE)
        np.testing.assert_array_equal(out.data, expected)
        probs = io.load(tmp_path / "out" / f"{case}_probabilities.nii.gz", ndim=4).data
        assert probs.shape == img.shape[1:] + (2,)
        np.testing.assert_array_equal(np.argmax(probs, -1), expected)
        table = (tmp_path / "out" / f"{case}_lesions.csv").read_text().splitlines()
        assert table[0].startswith("lesion,volume_ml,suv_max")
        assert len(table) - 1 == petfast.label(expected != 0, 18)[1]


def test_predict_files_autopet_studies(tmp_path):
    from petfast.phantom import make_study

    st = make_study("fdg", seed=3, scale=0.25)
    # A 40 x 40 x 32 PET crop (through the body) and a model on the PET's own spacing keep this quick.
    lo = np.array([30, 30, 40])
    pet = np.ascontiguousarray(st.pet[lo[0]:lo[0] + 40, lo[1]:lo[1] + 40, lo[2]:lo[2] + 32])
    pet_affine = st.pet_affine.copy()
    pet_affine[:3, 3] += st.pet_affine[:3, :3] @ lo
    spacing_zyx = tuple(np.linalg.norm(pet_affine[:3, :3], axis=0)[::-1])
    model = write_model(tmp_path / "model", make_plans(PATCH, spacing_zyx, [4, 8], [[1, 1, 1], [2, 2, 2]]), folds=(0,))
    study = tmp_path / "studies" / "patient1"
    study.mkdir(parents=True)
    io.save(study / "SUV.nii.gz", pet, pet_affine)
    io.save(study / "CT.nii.gz", st.ct, st.ct_affine)  # raw CT on its own grid
    pred = petfast.Predictor.from_nnunet(model, tta=False, device="cpu")
    pred.predict_files(tmp_path / "studies", tmp_path / "out", lesions="json", progress=False)
    # The grids as the files hold them (NIfTI stores affines in float32), so that the inputs are
    # bit-identical: a low-precision network ('auto' on some CPUs) would amplify a difference of 1e-7.
    pet_affine, ct_affine = io.load(study / "SUV.nii.gz").affine, io.load(study / "CT.nii.gz").affine
    ctres = petfast.resample_ct_to_pet(st.ct, ct_affine, pet.shape, pet_affine, order=3)
    expected = pred.predict([ctres, pet], pet_affine)
    np.testing.assert_array_equal(io.load(tmp_path / "out" / "patient1.nii.gz").data, expected)
    table = json.loads((tmp_path / "out" / "patient1_lesions.json").read_text())
    assert table["study"]["lesion_count"] == petfast.label(expected != 0, 18)[1]
    # The same study with CTres.nii.gz, given as the study folder itself.
    io.save(study / "CTres.nii.gz", ctres, pet_affine)
    pred.predict_files(study, tmp_path / "out2", progress=False)
    np.testing.assert_array_equal(io.load(tmp_path / "out2" / "patient1.nii.gz").data, expected)


def test_existing_outputs_stop_the_run_before_any_work(model_dir, tmp_path):
    for i in range(2):
        write_nnunet_case(tmp_path / "in", f"case{i}", make_case(20 + i).transpose(0, 3, 2, 1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "case1.nii.gz").write_bytes(b"mine")
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    with pytest.raises(FileExistsError, match="case1.nii.gz"):
        pred.predict_files(tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case1.nii.gz"]
    assert (tmp_path / "out" / "case1.nii.gz").read_bytes() == b"mine"
    pred.predict_files(tmp_path / "in", tmp_path / "out", overwrite=True, progress=False)
    assert io.load(tmp_path / "out" / "case1.nii.gz").data.dtype == np.uint8


def test_continue_predicts_only_the_cases_without_outputs(model_dir, tmp_path, capsys):
    from petfast.cli import main

    for i in range(3):
        write_nnunet_case(tmp_path / "in", f"case{i}", make_case(30 + i).transpose(0, 3, 2, 1))
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    pred.predict_files(tmp_path / "in", tmp_path / "ref", lesions="csv", progress=False)
    # An interrupted run: case0 complete, case1 with its mask but not its lesion table, case2 not started.
    (tmp_path / "out").mkdir()
    for name in ("case0.nii.gz", "case0_lesions.csv", "case1.nii.gz"):
        (tmp_path / "out" / name).write_bytes((tmp_path / "ref" / name).read_bytes())
    untouched = (tmp_path / "out" / "case0.nii.gz").stat().st_mtime_ns
    args = ["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-tta",
            "--device", "cpu", "--lesions", "csv", "--folds", "0", "--quiet"]
    assert main(args) == 1 and "--continue" in capsys.readouterr().err  # the clash error points at it
    assert main(args + ["--continue"]) == 0
    out = capsys.readouterr().out
    assert "1 case(s) skipped" in out and "case1" in out and "case2" in out and "\ncase0 " not in out
    assert (tmp_path / "out" / "case0.nii.gz").stat().st_mtime_ns == untouched
    for name in ("case1.nii.gz", "case1_lesions.csv", "case2.nii.gz", "case2_lesions.csv"):
        if name.endswith(".nii.gz"):
            np.testing.assert_array_equal(io.load(tmp_path / "out" / name).data, io.load(tmp_path / "ref" / name).data)
        else:
            assert (tmp_path / "out" / name).read_text() == (tmp_path / "ref" / name).read_text()


def test_a_failed_write_stops_the_run(model_dir, tmp_path, monkeypatch):
    """A full disk fails every write after it: the run stops within two cases, naming the case."""
    import errno

    img = make_case(45).transpose(0, 3, 2, 1)[:, :20, :20, :16]
    for i in range(8):
        write_nnunet_case(tmp_path / "in", f"case{i}", img)
    real_save = io.save

    def disk_fills_at_case2(path, *args, **kw):
        if path.name >= "case2":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kw)

    monkeypatch.setattr(io, "save", disk_fills_at_case2)
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    calls = []
    monkeypatch.setattr(pred, "predict", lambda *a, **k: calls.append(1) or type(pred).predict(pred, *a, **k))
    with pytest.raises(OSError, match="case2: its outputs could not be written .*No space left.*--continue"):
        pred.predict_files(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(calls) <= 5  # not the 8 cases
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case1.nii.gz"]


def test_a_bad_case_does_not_end_the_run(model_dir, tmp_path, capsys):
    from petfast.cli import main
    from petfast.predictor import CasesFailed

    for i in range(4):
        write_nnunet_case(tmp_path / "in", f"case{i}", make_case(40 + i).transpose(0, 3, 2, 1))
    # case1: a truncated download; case2: the PET on another grid.
    ct1 = tmp_path / "in" / "case1_0000.nii.gz"
    ct1.write_bytes(ct1.read_bytes()[:-200])
    pet2 = io.load(tmp_path / "in" / "case2_0001.nii.gz")
    io.save(tmp_path / "in" / "case2_0001.nii.gz", np.asarray(pet2.data)[:-1], pet2.affine, overwrite=True)
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    with pytest.warns(UserWarning, match="not predicted") as warned, pytest.raises(CasesFailed) as info:
        pred.predict_files(tmp_path / "in", tmp_path / "out", progress=False)
    assert [str(w.message).split(":")[0] for w in warned] == ["case1", "case2"]  # each said so at its turn
    err = info.value
    assert sorted(err.errors) == ["case1", "case2"] and not err.stopped
    assert [r["case"] for r in err.rows] == ["case0", "case3"]
    assert "2 of 4 cases failed" in str(err) and "case1_0000.nii.gz" in str(err) and "shape (39, 44, 36) differs" in str(err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case3.nii.gz"]
    # The command line reports them, exits 1, and --continue predicts just them once they are fixed.
    args = ["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-tta",
            "--device", "cpu", "--folds", "0", "--quiet", "--continue"]
    assert main(args) == 1
    cap = capsys.readouterr()
    assert "petfast predict: warning: case1: not predicted" in cap.err  # one line, not a source location
    assert "2 case(s) skipped" in cap.out  # the 2 written before; the 2 that failed are not "skipped"
    assert "2 of 2 cases failed" in cap.err and "case1" in cap.err and "case2" in cap.err
    assert "--continue" in cap.err and "case0" not in cap.out  # only the two without outputs were tried
    for i in (1, 2):
        for c, ch in enumerate(make_case(40 + i).transpose(0, 3, 2, 1)):
            io.save(tmp_path / "in" / f"case{i}_{c:04d}.nii.gz", ch, AFFINE, overwrite=True)
    assert main(args) == 0
    assert len(list((tmp_path / "out").iterdir())) == 4


def test_a_run_whose_first_cases_all_fail_stops(model_dir, tmp_path):
    from petfast.predictor import CasesFailed

    for i in range(5):
        write_nnunet_case(tmp_path / "in", f"case{i}", make_case(50 + i).transpose(0, 3, 2, 1))
        (tmp_path / "in" / f"case{i}_0001.nii.gz").write_bytes(b"not a NIfTI file")
    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    with pytest.warns(UserWarning), pytest.raises(CasesFailed, match="first 3 cases all failed") as info:
        pred.predict_files(tmp_path / "in", tmp_path / "out", progress=False)
    assert info.value.stopped and sorted(info.value.errors) == ["case0", "case1", "case2"]


# --- bad input -----------------------------------------------------------------------------------

def test_model_folder_errors(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    with pytest.raises(FileNotFoundError, match="fold_3.*folds with checkpoint_final.pth: 0, 1"):
        petfast.Predictor.from_nnunet(broken, folds=(3,))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        petfast.Predictor.from_nnunet(tmp_path / "nowhere")
    (broken / "fold_1" / "checkpoint_final.pth").write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(ValueError, match="fold_1.*not a readable checkpoint"):
        petfast.Predictor.from_nnunet(broken, folds=(0, 1))
    plans = json.loads((broken / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my.nets.SwinUNETR"
    (broken / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="unknown network architecture 'SwinUNETR'"):
        petfast.Predictor.from_nnunet(broken)
    (broken / "plans.json").unlink()
    with pytest.raises(FileNotFoundError, match="plans.json"):
        petfast.Predictor.from_nnunet(broken)
    shutil.copy(model_dir / "plans.json", broken / "plans.json")
    dj = make_dataset_json({"0": "CT", "1": "PET", "2": "MASK"})
    (broken / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(ValueError, match="normalise 2 channels but dataset.json names 3"):
        petfast.Predictor.from_nnunet(broken)


def test_checkpoint_that_does_not_fit_the_plans(tmp_path):
    plans = tiny_plans(channel_names={"0": "CT", "1": "PET", "2": "MASK"})
    torch.manual_seed(0)
    weights = build_network(tiny_plans(), "3d_fullres", 2, 2).state_dict()  # trained with 2 channels
    model = write_model_folder(tmp_path / "m", plans, make_dataset_json({"0": "CT", "1": "PET", "2": "MASK"}),
                               {0: weights})
    with pytest.raises(ValueError, match=r"encoder.stages.0.0.convs.0.conv.weight has shape \(4, 2, 3, 3, 3\)"):
        petfast.Predictor.from_nnunet(model)


def test_extra_heads_are_ignored_with_a_warning(model_dir, tmp_path):
    from petfast.nnunet.model_folder import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    weights = dict(ckpt["network_weights"])
    weights["decoder.organ_seg_layers.0.weight"] = torch.zeros(10, 4, 1, 1, 1)
    model = write_model_folder(tmp_path / "m", ckpt["init_args"]["plans"], ckpt["init_args"]["dataset_json"], {})
    (model / "fold_0").mkdir()
    save_checkpoint(model / "fold_0" / "checkpoint_final.pth", weights, ckpt["init_args"]["plans"],
                    ckpt["init_args"]["dataset_json"], "3d_fullres", 0)
    with pytest.warns(UserWarning, match=r"ignored 1 checkpoint entries .*decoder.organ_seg_layers"):
        pred = petfast.Predictor.from_nnunet(model, tta=False, device="cpu")
    img = make_case(30).transpose(0, 3, 2, 1)
    # On the CPU: two CUDA predictors may autotune different cuDNN algorithms and differ in a voxel.
    ref = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu").predict(img, spacing=(2, 2, 3))
    np.testing.assert_array_equal(pred.predict(img, spacing=(2, 2, 3)), ref)


def test_bad_cases(model_dir, tmp_path):
    from petfast.predictor import CasesFailed

    pred = petfast.Predictor.from_nnunet(model_dir, tta=False, device="cpu")
    img = make_case(31).transpose(0, 3, 2, 1)
    with pytest.raises(ValueError, match=r"takes 2 channels \(CT, PET\), got 3"):
        pred.predict(np.concatenate([img, img[:1]]), spacing=(2, 2, 3))
    with pytest.raises(ValueError, match="share one grid"):
        pred.predict([img[0], img[1][:-1]], spacing=(2, 2, 3))
    with pytest.raises(ValueError, match="affine or its spacing"):
        pred.predict(img)
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        pred.predict(img, spacing=(2, 0, 3))
    bad = img.copy()
    bad[1, 5, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"channel 1 \(PET\) contains NaN"):
        pred.predict(bad, spacing=(2, 2, 3))
    bad[1, 5, 5, 5] = np.inf
    with pytest.raises(ValueError, match=r"channel 1 \(PET\) contains NaN or infinite"):
        pred.predict(bad, spacing=(2, 2, 3))
    with pytest.raises(MemoryError, match=r"from spacing \(3000, 2000, 2000\) mm .* in mm\?"):  # metres
        pred.predict(img, spacing=(2000, 2000, 3000))
    with pytest.warns(UserWarning, match=r"from spacing \(0.3, 0.2, 0.2\) mm .* gives 3x4x4 voxels, 0.000861 times as many"):  # cm
        assert pred.predict(img, spacing=(0.2, 0.2, 0.3)).shape == img.shape[1:]
    with warnings.catch_warnings():  # a spacing 5x too large: the warning comes before the long work
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match=r"gives 170x201x196 voxels, 120 times as many\. Is the spacing"):
            pred.predict(img, spacing=(10, 10, 15))
    # Files: a PET on another grid than the CT, and a missing channel file.
    write_nnunet_case(tmp_path / "in", "case0", img)
    io.save(tmp_path / "in" / "case0_0001.nii.gz", img[1], np.diag([2.0, 2.0, 3.5, 1.0]), overwrite=True)
    with pytest.warns(UserWarning), pytest.raises(CasesFailed, match="1 of 1 cases failed.*case0_0001.nii.gz"):
        pred.predict_files(tmp_path / "in", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "case0.nii.gz").exists()
    (tmp_path / "in" / "case0_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case0 lacks case0_0001.nii.gz"):
        pred.predict_files(tmp_path / "in", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="no cases"):
        pred.predict_files(tmp_path / "out", tmp_path / "out2", progress=False)
    (tmp_path / "root" / "imagesTs").mkdir(parents=True)
    write_nnunet_case(tmp_path / "in2", "case1", img)
    (tmp_path / "in2" / "stray_0000.nii.gz").mkdir()  # a folder named like a channel file is not a case
    assert [c.id for c in pred.find_cases(tmp_path / "in2")] == ["case1"]
    with pytest.raises(FileNotFoundError, match="dataset root.* in imagesTs"):
        pred.predict_files(tmp_path / "root", tmp_path / "out2", progress=False)
    with pytest.raises(ValueError, match="the output is a folder"):
        pred.predict_files(tmp_path / "in", tmp_path / "case0.nii.gz", progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        petfast.Predictor.from_nnunet(model_dir, device="cpu", batch_size=0)


def test_bad_arguments(model_dir, tmp_path):
    make = functools.partial(petfast.Predictor.from_nnunet, model_dir, device="cpu")
    for kw, match in (({"step": 0}, r"step must be in \(0, 1\], got 0"), ({"step": 1.5}, "step must be in"),
                      ({"precision": "fp8"}, "precision must be 'auto', 'fp16', 'bf16' or 'fp32', got 'fp8'")):
        with pytest.raises(ValueError, match=match):
            make(**kw)
    with pytest.raises(ValueError, match="at least one network"):
        petfast.Predictor([], tiny_plans(), make_dataset_json(), device="cpu")
    with pytest.raises(ValueError, match="region-based models"):
        petfast.Predictor([], tiny_plans(), {**make_dataset_json(), "labels": {"background": 0, "lesion": [1, 2]}})
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["resampling_fn_data"] = "my_resampler"
    with pytest.raises(ValueError, match="resampling_fn_data='my_resampler'"):
        petfast.Predictor([], plans, make_dataset_json(), device="cpu")
    pred = make(tta=False)
    img = make_case(32).transpose(0, 3, 2, 1)
    with pytest.raises(TypeError, match="numpy array, a torch tensor or a list of them, got str"):
        pred.predict("case.nii.gz", spacing=(2, 2, 3))
    with pytest.raises(ValueError, match=r"\(C, I, J, K\) or a list"):
        pred.predict(img[0], spacing=(2, 2, 3))
    with pytest.raises(ValueError, match="non-empty 3-D volume"):
        pred.predict([img[0, :0], img[1, :0]], spacing=(2, 2, 3))
    with pytest.raises(TypeError, match="is not numeric"):
        pred.predict([img[0].astype(str), img[1]], spacing=(2, 2, 3))
    write_nnunet_case(tmp_path / "in", "case0", img)
    with pytest.raises(ValueError, match="lesions must be None, 'csv' or 'json', got 'xlsx'"):
        pred.predict_files(tmp_path / "in", tmp_path / "out", lesions="xlsx", progress=False)
    with pytest.raises(FileNotFoundError, match="no such input folder"):
        pred.predict_files(tmp_path / "nowhere", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # argument errors come before any output


def test_cli_predict(model_dir, tmp_path, capsys):
    from petfast.cli import main

    write_nnunet_case(tmp_path / "in", "caseA", make_case(40).transpose(0, 3, 2, 1))
    rc = main(["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--no-tta", "--folds", "0", "1", "--device", "cpu", "--lesions", "csv", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 fold(s)" in out and "TTA off" in out and "caseA" in out and "cases/min" in out
    assert (tmp_path / "out" / "caseA.nii.gz").exists() and (tmp_path / "out" / "caseA_lesions.csv").exists()
    rc = main(["predict", "-m", str(model_dir), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err
    rc = main(["predict", "-m", str(tmp_path / "none"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    assert rc == 1 and "no such model folder" in capsys.readouterr().err
