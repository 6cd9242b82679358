"""Component statistics, dust, autoPET metrics, PET quantification and `petfast evaluate`."""
import json
import math

import numpy as np
import pytest
import scipy.ndimage as ndi

import petfast
from petfast import io, metrics, phantom, quant
from petfast.cli import main



def _cc3d():
    """cc3d, the peer; imported per test so that the CUDA tests run where it is not installed."""
    return pytest.importorskip("cc3d")


def official_autopet(gt, pred, voxel_ml):
    """An independent implementation, written as the autoPET III evaluation script does it."""
    cc3d = _cc3d()
    gt, pred = (gt != 0).astype(int), (pred != 0).astype(int)
    if gt.sum() == 0:
        dice, fnv = math.nan, math.nan
    else:
        dice = 2 * (gt * pred).sum() / (gt.sum() + pred.sum())
        cc = cc3d.connected_components(gt, connectivity=18)
        fnv = sum((cc == i).sum() for i in range(1, cc.max() + 1) if ((cc == i) * pred).sum() == 0) * voxel_ml
    fpv = 0.0
    if pred.sum():
        cc = cc3d.connected_components(pred, connectivity=18)
        fpv = sum((cc == i).sum() for i in range(1, cc.max() + 1) if ((cc == i) * gt).sum() == 0) * voxel_ml
    return dice, fpv, fnv


def blobs(rng, shape=(40, 44, 36), n=8):
    m = np.zeros(shape, np.uint8)
    for _ in range(n):
        c = rng.integers(4, np.array(shape) - 4)
        r = rng.integers(1, 4)
        m[c[0] - r:c[0] + r + 1, c[1] - r:c[1] + r + 1, c[2] - r:c[2] + r + 1] = 1
    return m


def test_component_stats_match_cc3d_and_scipy(rng):
    cc3d = _cc3d()
    mask = (rng.random((30, 41, 25)) < 0.3).astype(np.uint8)
    image = rng.normal(2, 1, mask.shape).astype(np.float32)
    labels, n = petfast.label(mask, 26)
    st = petfast.component_stats(labels, image, spacing=(2.0, 2.0, 3.0))
    ref = cc3d.statistics(labels)
    idx = np.arange(1, n + 1)
    np.testing.assert_array_equal(st.voxels, ref["voxel_counts"][1:])
    assert not hasattr(st, "volume") and "voxels" in st  # fields as attributes and keys; others AttributeError
    np.testing.assert_allclose(st.volume_ml, ref["voxel_counts"][1:] * 12 / 1000)
    np.testing.assert_allclose(st.centroid_mm, ref["centroids"][1:] * [2, 2, 3])
    boxes = ref["bounding_boxes"][1:]
    for axis in range(3):
        np.testing.assert_array_equal(st.bbox[:, 2 * axis], [b[axis].start for b in boxes])
        np.testing.assert_array_equal(st.bbox[:, 2 * axis + 1], [b[axis].stop - 1 for b in boxes])
    np.testing.assert_allclose(st["max"], ndi.maximum(image, labels, idx))
    np.testing.assert_allclose(st["mean"], ndi.mean(image, labels, idx), rtol=1e-6)
    np.testing.assert_allclose(st["sum"], ndi.sum(image, labels, idx), rtol=1e-6)
    petfast.set_num_threads(1)
    try:
        single = petfast.component_stats(labels, image, spacing=(2.0, 2.0, 3.0))
    finally:
        petfast.set_num_threads(2)
    np.testing.assert_array_equal(single.bbox, st.bbox)
    np.testing.assert_allclose(single["sum"], st["sum"])


def test_remove_small_matches_cc3d_dust(rng):
    cc3d = _cc3d()
    mask = (rng.random((30, 31, 32)) < 0.25).astype(np.uint8)
    for threshold in (1, 3, 10):
        np.testing.assert_array_equal(petfast.remove_small(mask, min_voxels=threshold, connectivity=26),
                                      cc3d.dust(mask, threshold=threshold, connectivity=26))
    # min_ml with the spacing: 8 voxels of 2x2x2 mm are 0.064 ml.
    assert np.array_equal(petfast.remove_small(mask, min_ml=0.064, spacing=(2, 2, 2)),
                          cc3d.dust(mask, threshold=8, connectivity=26))
    organs = np.zeros((10, 10, 10), np.int16)
    organs[1:4, 1:4, 1:4] = 7
    organs[8, 8, 8] = 3
    kept = petfast.remove_small(organs, min_voxels=2)
    assert kept.dtype == np.int16 and kept[2, 2, 2] == 7 and kept[8, 8, 8] == 0


def test_remove_small_in_every_layout_and_dtype(rng):
    cc3d = _cc3d()
    mask = (rng.random((20, 21, 22)) < 0.15).astype(np.uint8)
    expected = cc3d.dust(mask, threshold=3, connectivity=26) != 0
    torch = pytest.importorskip("torch")
    variants = {"Fortran": np.asfortranarray(mask), "bool": mask.astype(bool), "float x 2.5": mask * np.float32(2.5),
                "big-endian": mask.astype(">i2"), "strided": np.repeat(mask, 2, axis=1)[:, ::2],
                "torch": torch.from_numpy(mask), "torch bool, permuted": torch.from_numpy(mask).bool().permute(2, 0, 1)}
    for name, x in variants.items():
        out = petfast.remove_small(x, min_voxels=3)
        assert type(out) is type(x) and out.shape == x.shape, name
        got = out.numpy() if torch.is_tensor(out) else out
        got = got.transpose(1, 2, 0) if "permuted" in name else got
        np.testing.assert_array_equal(got != 0, expected, err_msg=name)
        kept_values = np.asarray(x.permute(1, 2, 0) if "permuted" in name else x)[expected]
        np.testing.assert_array_equal(got[expected], kept_values, err_msg=name)  # values kept, not binarised
    frozen = mask.copy()
    frozen.flags.writeable = False
    assert np.array_equal(petfast.remove_small(frozen, min_voxels=3) != 0, expected)  # the input is only read


def test_hand_computed_metrics():
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:5, 2:5, 2:5] = 1      # lesion A, 27 voxels, found
    gt[10:12, 10:12, 10:12] = 1  # lesion B, 8 voxels, missed
    pred[3:6, 3:6, 3:6] = 1    # overlaps A on 2x2x2 = 8 voxels
    pred[15, 15, 15] = 1       # a false positive voxel
    pred[17, 17, 17] = pred[18, 18, 17] = 1  # two voxels touching along an edge: one 18-connected component
    m = metrics.autopet(gt, pred, voxel_ml=0.5)
    assert m["dice"] == pytest.approx(2 * 8 / (35 + 30))
    assert m["fp_volume_ml"] == pytest.approx(3 * 0.5)
    assert m["fn_volume_ml"] == pytest.approx(8 * 0.5)
    assert (m["tp_lesions"], m["fn_lesions"], m["fp_lesions"]) == (1, 1, 2)
    assert (m["gt_lesions"], m["pred_lesions"]) == (2, 3)
    assert {type(v) for v in m.values()} == {float, int}  # plain Python numbers, as json and csv print them


def test_corner_contact_is_two_lesions_at_18_connectivity():
    gt = np.zeros((5, 5, 5), np.uint8)
    gt[1, 1, 1] = gt[2, 2, 2] = 1
    assert metrics.autopet(gt, gt, 1.0)["gt_lesions"] == 2


def test_empty_ground_truth_conventions():
    gt = np.zeros((8, 8, 8), np.uint8)
    pred = gt.copy()
    pred[2:4, 2:4, 2:4] = 1
    m = metrics.autopet(gt, pred, 0.1)
    assert math.isnan(m["dice"]) and math.isnan(m["fn_volume_ml"]) and m["fp_volume_ml"] == pytest.approx(0.8)
    m = metrics.autopet(gt, gt, 0.1)
    assert math.isnan(m["dice"]) and m["fp_volume_ml"] == 0
    full = metrics.autopet(pred, gt, 0.1)  # lesions, empty prediction
    assert full["dice"] == 0 and full["fn_volume_ml"] == pytest.approx(0.8) and full["fp_volume_ml"] == 0


def test_matches_independent_implementation_on_synthetic_cases(rng):
    for _ in range(6):
        gt, pred = blobs(rng), blobs(rng)
        pred |= gt * (rng.random(gt.shape) < 0.5).astype(np.uint8)
        ours = metrics.autopet(gt, pred, 0.0123)
        ref = official_autopet(gt, pred, 0.0123)
        np.testing.assert_allclose([ours["dice"], ours["fp_volume_ml"], ours["fn_volume_ml"]], ref)


def test_metrics_on_a_phantom_study():
    st = phantom.make_study("psma", seed=4, scale=0.25, diagnosis="PROSTATE_CANCER")
    pred = petfast.remove_small((st.pet > 4).astype(np.uint8), min_voxels=2)
    voxel_ml = float(np.prod(np.abs(np.diag(st.pet_affine)[:3]))) / 1000
    ours = metrics.autopet(st.label, pred, voxel_ml)
    np.testing.assert_allclose([ours["dice"], ours["fp_volume_ml"], ours["fn_volume_ml"]],
                               official_autopet(st.label, pred, voxel_ml))


def test_torch_inputs(rng):
    torch = pytest.importorskip("torch")
    gt, pred = blobs(rng), blobs(rng)
    a = metrics.autopet(torch.from_numpy(gt), torch.from_numpy(pred), 0.2)
    b = metrics.autopet(gt, pred, 0.2)
    assert a == pytest.approx(b, nan_ok=True)


def test_component_stats_in_any_memory_order(rng):
    # The CPU walks the labels in their memory order (NIfTI volumes are Fortran-ordered); every field
    # comes back along (i, j, k) all the same.
    mask = (rng.random((17, 23, 29)) < 0.2).astype(np.uint8)
    image = rng.normal(3, 1, mask.shape).astype(np.float32)
    labels, n = petfast.label(mask, 18)
    ref = petfast.component_stats(labels, image, spacing=(1.0, 2.0, 3.0))
    layouts = {"Fortran": (np.asfortranarray(labels), np.asfortranarray(image)),
               "Fortran labels, C image": (np.asfortranarray(labels), image),
               "axes permuted in memory": (labels.transpose(1, 2, 0).copy().transpose(2, 0, 1),
                                           image.transpose(2, 1, 0).copy().transpose(2, 1, 0))}
    for name, (lab, img) in layouts.items():
        st = petfast.component_stats(lab, img, spacing=(1.0, 2.0, 3.0))
        for key in ref:
            np.testing.assert_allclose(st[key], ref[key], rtol=1e-12, err_msg=f"{name}: {key}")


def test_torch_masks_must_be_binary():
    torch = pytest.importorskip("torch")
    assert metrics.autopet(torch.ones((3, 3, 3)), torch.ones((3, 3, 3), dtype=torch.int32), 1.0)["dice"] == 1.0
    with pytest.raises(ValueError, match="binary mask"):
        metrics.autopet(torch.ones((3, 3, 3)), torch.full((3, 3, 3), 0.5), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.autopet(torch.full((3, 3, 3), float("nan")), torch.ones((3, 3, 3)), 1.0)


def test_masks_of_any_dtype_and_layout_score_alike(rng):
    # Masks are checked and converted to bytes in one pass (host kernel dtypes) or by numpy / torch
    # (others): every dtype and layout scores as the uint8 mask does, and one stray value anywhere in
    # a large mask is still an error.
    torch = pytest.importorskip("torch")
    shape = (40, 50, 60)
    gt = (ndi.gaussian_filter(rng.random(shape), 2) > 0.52).astype(np.uint8)
    pred = np.roll(gt, 2, axis=0)
    expected = metrics.autopet(gt, pred, 0.01)
    variants = {"int16": pred.astype(np.int16), "int32 Fortran": np.asfortranarray(pred.astype(np.int32)),
                "float32 strided": np.repeat(pred.astype(np.float32), 2, axis=2)[:, :, ::2],
                "float64 reversed": np.ascontiguousarray(pred[::-1].astype(np.float64))[::-1],
                "int8": pred.astype(np.int8), "uint16": pred.astype(np.uint16),
                "torch float32": torch.from_numpy(pred.astype(np.float32)), "torch int64": torch.from_numpy(pred.astype(np.int64))}
    for name, x in variants.items():
        assert metrics.autopet(gt, x, 0.01) == expected, name
    for dtype in (np.float32, np.int16):
        stray = pred.astype(dtype)
        stray[31, 7, 44] = 3
        with pytest.raises(ValueError, match=r"binary mask \(values 0 and 1\), got values in \[0, 3\]"):
            metrics.autopet(gt, stray, 0.01)
    nan = pred.astype(np.float32)
    nan[5, 40, 3] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        metrics.autopet(gt, np.asfortranarray(nan), 0.01)


def test_metric_errors():
    with pytest.raises(ValueError, match="shape"):
        metrics.autopet(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), 1.0)
    with pytest.raises(ValueError, match="voxel_ml"):
        metrics.autopet(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), 0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.autopet(np.full((3, 3, 3), np.nan), np.zeros((3, 3, 3)), 1.0)
    for bad in (np.full((3, 3, 3), 2, np.uint8), np.full((3, 3, 3), 0.5), np.full((3, 3, 3), -1, np.int16)):
        with pytest.raises(ValueError, match=r"binary mask \(values 0 and 1\)"):  # labels 0/2, probabilities
            metrics.autopet(np.zeros((3, 3, 3)), bad, 1.0)
        with pytest.raises(ValueError, match="binary mask"):
            quant.lesions(np.ones((3, 3, 3)), bad, (1, 1, 1))
    assert metrics.autopet(np.ones((3, 3, 3)), np.ones((3, 3, 3), np.int32), 1.0)["dice"] == 1.0  # any 0/1 dtype
    with pytest.raises(ValueError, match="spacing"):
        petfast.component_stats(np.zeros((3, 3, 3), np.int32), spacing=(1, 0, 1))
    with pytest.raises(TypeError, match="int32"):
        petfast.component_stats(np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="non-negative"):  # the op would skip them silently
        petfast.component_stats(np.full((3, 3, 3), -1, np.int32))
    with pytest.raises(ValueError, match="NaN"):
        quant.lesions(np.full((3, 3, 3), np.nan), np.ones((3, 3, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="infinite"):
        quant.lesions(np.full((3, 3, 3), np.inf), np.ones((3, 3, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        quant.lesions(np.zeros((3, 3, 3)), np.ones((3, 3, 3)), (1, -1, 1))
    with pytest.raises(ValueError, match="exactly one"):
        petfast.remove_small(np.zeros((3, 3, 3), np.uint8))


def test_quantification_hand_computed():
    pet = np.zeros((30, 30, 30), np.float32)
    mask = np.zeros_like(pet, dtype=np.uint8)
    mask[5:7, 5:7, 5:7] = 1           # lesion 1: 8 voxels of SUV 4, one hot voxel of 10
    pet[5:7, 5:7, 5:7] = 4
    pet[6, 6, 6] = 10
    mask[20:23, 20:23, 20] = 1        # lesion 2: 9 voxels of SUV 2
    pet[20:23, 20:23, 20] = 2
    q = quant.lesions(pet, mask, spacing=(2.0, 2.0, 2.0))
    l1, l2 = q["lesions"]
    assert l1["volume_ml"] == pytest.approx(8 * 8 / 1000) and l1["suv_max"] == 10
    assert l1["suv_mean"] == pytest.approx((7 * 4 + 10) / 8) and l1["tlg"] == pytest.approx(l1["suv_mean"] * 0.064)
    assert l1["hottest_voxel"] == [6, 6, 6]
    # SUVpeak: the voxels within 6.2 mm of (6,6,6) at 2 mm spacing (offsets with |d|^2 <= 9.6 voxels^2).
    d = np.indices((30, 30, 30)) - np.array([6, 6, 6])[:, None, None, None]
    sphere = (d**2).sum(0) * 4.0 <= quant.PEAK_RADIUS_MM**2
    assert l1["suv_peak"] == pytest.approx(pet[sphere].mean())
    assert l2["suv_max"] == 2 and l2["suv_mean"] == pytest.approx(2)
    s = q["study"]
    assert s["lesion_count"] == 2 and s["mtv_ml"] == pytest.approx(17 * 8 / 1000)
    assert s["tlg"] == pytest.approx(l1["tlg"] + l2["tlg"]) and s["suv_max"] == 10
    c1, c2 = np.array(l1["centroid_mm"]), np.array(l2["centroid_mm"])
    assert s["dmax_mm"] == pytest.approx(np.linalg.norm(c1 - c2))
    # Anisotropic voxels, and the sphere cut by the volume's edge: the mean of the voxels inside both.
    corner = np.zeros_like(mask)
    corner[0:2, 1, 0:3] = 1
    pet[0, 1, 0] = 12
    (lc,) = quant.lesions(pet, corner, spacing=(4.0, 3.0, 1.5))["lesions"]
    d = (np.indices(pet.shape) - np.array([0, 1, 0])[:, None, None, None]) * np.array([4.0, 3.0, 1.5])[:, None, None, None]
    assert lc["hottest_voxel"] == [0, 1, 0]
    assert lc["suv_peak"] == pytest.approx(pet[(d**2).sum(0) <= quant.PEAK_RADIUS_MM**2].mean())
    empty = quant.lesions(pet, np.zeros_like(mask), (2, 2, 2))["study"]
    assert empty["lesion_count"] == 0 and empty["mtv_ml"] == 0 and math.isnan(empty["suv_max"])


def test_evaluate_cli(tmp_path, capsys):
    from petfast import data

    ds = data.write_phantom_dataset(tmp_path / "ds", cases=6, scale=0.2, seed=3)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    rows = {}
    for p in sorted((ds / "labelsTr").iterdir()):
        img = io.load(p)
        pred = np.asarray(img.data).copy()
        pred[:2] = 1  # a false positive slab on every case
        io.save(pred_dir / p.name, pred, img.affine)
        rows[p.name[:-7]] = official_autopet(np.asarray(img.data), pred, float(np.prod(img.spacing)) / 1000)
    out = tmp_path / "results.json"
    assert main(["evaluate", "--gt", str(ds / "labelsTr"), "--pred", str(pred_dir), "--pet", str(ds / "imagesTr"),
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert len(res["cases"]) == 6
    for r in res["cases"]:
        np.testing.assert_allclose([r["dice"], r["fp_volume_ml"], r["fn_volume_ml"]], rows[r["case"]], rtol=1e-6)
        assert r["pred_mtv_ml"] >= r["gt_mtv_ml"]
        # evaluate labels each mask once for both tables: its numbers are quant.lesions' own.
        pet = io.load(ds / "imagesTr" / f"{r['case']}_0001.nii.gz")
        for who, folder in (("gt", ds / "labelsTr"), ("pred", pred_dir)):
            study = quant.lesions(pet.data, io.load(folder / f"{r['case']}.nii.gz").data, pet.spacing)["study"]
            for key in ("mtv_ml", "tlg", "suv_max", "dmax_mm"):
                np.testing.assert_allclose(r[f"{who}_{key}"], study[key], rtol=1e-12, err_msg=f"{who}_{key}")
    dices = [v[0] for v in rows.values() if not math.isnan(v[0])]
    assert res["aggregate"]["dice_mean"] == pytest.approx(np.mean(dices))
    assert res["aggregate"]["dice_n"] == len(dices)
    assert res["aggregate"]["fp_volume_ml_n"] == 6
    csv_out = tmp_path / "results.csv"
    assert main(["evaluate", "--gt", str(ds / "labelsTr"), "--pred", str(pred_dir), "--out", str(csv_out), "--quiet"]) == 0
    lines = csv_out.read_text().splitlines()
    assert len(lines) == 1 + 6 + 2 and lines[-2].startswith("MEAN") and lines[-1].startswith("MEDIAN")
    assert main(["evaluate", "--gt", str(ds / "labelsTr"), "--pred", str(pred_dir), "--out", str(csv_out), "--quiet"]) == 1
    assert "overwrite" in capsys.readouterr().err
    # A missing prediction is an error that names the case, and nothing is written.
    next(pred_dir.iterdir()).unlink()
    bad_out = tmp_path / "bad.csv"
    assert main(["evaluate", "--gt", str(ds / "labelsTr"), "--pred", str(pred_dir), "--out", str(bad_out), "--quiet"]) == 1
    assert "no prediction" in capsys.readouterr().err and not bad_out.exists()
    # A probability map as a prediction: an error naming the file, not a silently wrong score.
    first = next((ds / "labelsTr").iterdir())
    img = io.load(first)
    io.save(pred_dir / first.name, np.asarray(img.data, np.float32) * 0.8, img.affine, overwrite=True)
    assert main(["evaluate", "--gt", str(ds / "labelsTr"), "--pred", str(pred_dir), "--out", str(bad_out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert first.name in err and "binary mask" in err and not bad_out.exists()
    # A PET with a NaN: an error naming the PET file.
    io.save(pred_dir / first.name, np.asarray(img.data), img.affine, overwrite=True)
    pet_dir = tmp_path / "pet"
    pet_dir.mkdir()
    for p in (ds / "imagesTr").glob("*_0001.nii.gz"):
        pet = io.load(p)
        suv = np.asarray(pet.data, np.float32).copy()
        suv[0, 0, 0] = np.nan
        io.save(pet_dir / p.name, suv, pet.affine)
    assert main(["evaluate", "--gt", str(ds / "labelsTr"), "--pred", str(pred_dir), "--pet", str(pet_dir),
                 "--out", str(bad_out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "_0001.nii.gz" in err and "NaN" in err and not bad_out.exists()


def _stats_nan_cases(device):
    """component_stats reads the image inside the components only: a NaN there is an error, one
    outside is not."""
    torch = pytest.importorskip("torch") if device != "numpy" else None
    labels = np.zeros((6, 7, 8), np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[4, 5, 6] = 2
    image = np.ones(labels.shape, np.float32)
    image[0, 0, 0] = np.nan
    as_kind = (lambda x: x) if torch is None else (lambda x: torch.from_numpy(x).to(device))
    st = petfast.component_stats(as_kind(labels), as_kind(image))
    assert list(st["max"]) == [1.0, 1.0] and list(st["voxels"]) == [8, 1]
    image[4, 5, 6] = np.nan
    with pytest.raises(ValueError, match="NaN values inside the components"):
        petfast.component_stats(as_kind(labels), as_kind(image))


def _stats_count_cases(device, rng):
    """label()'s count given to component_stats: the same statistics without finding it again; a
    count below the largest label, or negative labels, are an error, not rows silently left out."""
    torch = pytest.importorskip("torch") if device != "numpy" else None
    as_kind = (lambda x: x) if torch is None else (lambda x: torch.from_numpy(x).to(device))
    mask = (rng.random((19, 17, 23)) < 0.25).astype(np.uint8)
    image = rng.normal(3, 1, mask.shape).astype(np.float32)
    labels, n = petfast.label(mask, 26)
    ref = petfast.component_stats(as_kind(labels), as_kind(image), (2, 2, 3))
    inputs = [(labels, image)] + ([(np.asfortranarray(labels), np.asfortranarray(image))] if torch is None else [])
    for lab, img in inputs:
        st = petfast.component_stats(as_kind(lab), as_kind(img), (2, 2, 3), count=n)
        for key in ref:
            np.testing.assert_allclose(st[key], ref[key], rtol=1e-12, err_msg=key)
    more = petfast.component_stats(as_kind(labels), as_kind(image), (2, 2, 3), count=n + 2)
    assert list(more["voxels"][-2:]) == [0, 0] and np.isnan(more["mean"][-1])  # labels with no voxels
    with pytest.raises(ValueError, match=rf"\d+ voxels have labels outside 0..{n - 1}"):
        petfast.component_stats(as_kind(labels), as_kind(image), (2, 2, 3), count=n - 1)
    negative = labels.copy()
    negative[negative == 1] = -5
    with pytest.raises(ValueError, match="labels outside 0.."):
        petfast.component_stats(as_kind(negative), None, count=n)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="count must be a non-negative integer"):
            petfast.component_stats(as_kind(labels), count=bad)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_stats_with_the_label_count(device, rng):
    _stats_count_cases(device, rng)


@pytest.mark.cuda
def test_cuda_stats_with_the_label_count(rng):
    _stats_count_cases("cuda", rng)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_stats_nan_inside_components_is_an_error(device):
    _stats_nan_cases(device)


@pytest.mark.cuda
def test_cuda_stats_nan_inside_components_is_an_error():
    _stats_nan_cases("cuda")


@pytest.mark.cuda
def test_cuda_stats_match_cpu(rng):
    torch = pytest.importorskip("torch")
    mask = (rng.random((40, 33, 27)) < 0.3).astype(np.uint8)
    image = rng.normal(size=mask.shape).astype(np.float32)
    labels, _ = petfast.label(mask, 26)
    cpu = petfast.component_stats(labels, image, (2, 2, 3))
    gpu = petfast.component_stats(torch.from_numpy(labels).cuda(), torch.from_numpy(image).cuda(), (2, 2, 3))
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-9)
    m_cpu = metrics.autopet(mask, np.roll(mask, 1, 0), 0.1)
    m_gpu = metrics.autopet(torch.from_numpy(mask).cuda(), torch.from_numpy(np.roll(mask, 1, 0)).cuda(), 0.1)
    assert m_gpu == pytest.approx(m_cpu, nan_ok=True)


@pytest.mark.cuda
@pytest.mark.parametrize("image_dtype", [np.float32, np.int16, None])
def test_cuda_stats_on_many_components(image_dtype, rng):
    """Many components on a volume of many blocks (atomics from all of them), every image kind,
    and a volume without components."""
    torch = pytest.importorskip("torch")
    labels, count = petfast.label((rng.random((60, 130, 140)) < 0.3).astype(np.uint8), 6)
    image = None if image_dtype is None else (rng.normal(size=labels.shape) * 100).astype(image_dtype)
    cpu = petfast.component_stats(labels, image, (2.0, 2.0, 3.0))
    gpu = petfast.component_stats(torch.from_numpy(labels).cuda(),
                                  None if image is None else torch.from_numpy(image).cuda(), (2.0, 2.0, 3.0))
    assert count > 1000 and set(gpu) == set(cpu)
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-9, err_msg=key)
    empty = petfast.component_stats(torch.zeros((5, 6, 7), dtype=torch.int32, device="cuda"))
    assert all(len(v) == 0 for v in empty.values())


def _label_with_stats_cases(device, rng, monkeypatch):
    """label_with_stats gives label()'s labels and component_stats' statistics of them (computed by
    the CPU twins from numpy), with statistics gathered while labelling and, for a mask with more
    components than the labeller's tables hold, in component_stats' own pass; binary and multi-label
    masks, every connectivity, C and Fortran order, float32, int16 and no image."""
    from petfast import components

    torch = pytest.importorskip("torch") if device != "numpy" else None
    as_kind = (lambda x: x) if torch is None else (lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(device))
    shape = (23, 30, 34) if device != "cuda" else (48, 90, 100)  # on a GPU: many CUDA blocks' atomics
    smooth = ndi.gaussian_filter(rng.random(shape), 1.5)
    binary = (smooth > np.percentile(smooth, 75)).astype(np.uint8)
    organs = np.digitize(smooth, np.percentile(smooth, [55, 70, 85])).astype(np.int16)  # 0..3, 2x2x2 mixed
    image = (rng.normal(3, 1, shape) * 10).astype(np.float32)
    spacing = (2.0, 2.5, 3.0)
    seen_counts, full = [], components._LABEL_STATS_ROWS
    for rows in (full, 3):  # 3: the labeller's tables too small, the second pass
        monkeypatch.setattr(components, "_LABEL_STATS_ROWS", rows)
        for mask, connectivity, img in [(binary, 26, image), (binary, 18, image.astype(np.int16)), (binary, 6, None),
                                        (organs, 26, image), (organs, 18, None)]:
            layouts = [np.ascontiguousarray, np.asfortranarray] if torch is None else [np.ascontiguousarray]
            for layout in layouts:
                ref_labels, n = petfast.label(layout(mask), connectivity)
                ref = petfast.component_stats(ref_labels, img, spacing)
                labels, count, st = petfast.label_with_stats(as_kind(layout(mask)), None if img is None else as_kind(layout(img)),
                                                             spacing, connectivity)
                got = labels if torch is None else labels.cpu().numpy()
                assert count == n and type(labels) is type(as_kind(mask))
                np.testing.assert_array_equal(got, ref_labels)
                assert set(st) == set(ref)
                for key in ref:
                    np.testing.assert_allclose(st[key], ref[key], rtol=1e-12, err_msg=f"{key} rows={rows}")
                seen_counts.append(n)
    assert min(seen_counts) > 3 and max(seen_counts) < full  # both paths taken
    # An image in another layout than the mask's (Fortran-ordered, reversed along an axis).
    other = np.asfortranarray(image[::-1])[::-1] if torch is None else torch.from_numpy(image).to(device).permute(2, 1, 0)
    mask = binary if torch is None else np.ascontiguousarray(binary.transpose(2, 1, 0))
    labels, count, st = petfast.label_with_stats(as_kind(mask), other, spacing)
    ref = petfast.component_stats(labels, other, spacing, count=count)
    for key in ref:
        np.testing.assert_allclose(st[key], ref[key], rtol=1e-12, err_msg=f"{key}, image in another layout")
    overlap = petfast.label_with_stats(as_kind(binary), as_kind(np.roll(binary, 3, 0).astype(bool)))[2]
    ref_labels, n = petfast.label(binary, 26)
    np.testing.assert_array_equal(overlap["sum"], np.bincount(ref_labels[np.roll(binary, 3, 0) > 0], minlength=n + 1)[1:])
    nan_outside = image.copy()
    nan_outside[binary == 0] = np.nan
    st = petfast.label_with_stats(as_kind(binary), as_kind(nan_outside))[2]
    assert np.isfinite(st["max"]).all()
    nan_outside[np.nonzero(binary)[0][0], np.nonzero(binary)[1][0], np.nonzero(binary)[2][0]] = np.nan
    with pytest.raises(ValueError, match="NaN values inside the components"):
        petfast.label_with_stats(as_kind(binary), as_kind(nan_outside))
    with pytest.raises(ValueError, match="image shape .* differs from mask shape"):
        petfast.label_with_stats(as_kind(binary), as_kind(image[1:]))
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        petfast.label_with_stats(as_kind(binary), None, (1.0, 0.0, 1.0))


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_label_with_stats_equals_label_then_component_stats(device, rng, monkeypatch):
    _label_with_stats_cases(device, rng, monkeypatch)


@pytest.mark.cuda
def test_cuda_label_with_stats_equals_cpu(rng, monkeypatch):
    _label_with_stats_cases("cuda", rng, monkeypatch)
