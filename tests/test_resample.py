"""petfast.resample against scipy.ndimage, SimpleITK and nilearn, CUDA against CPU, and bad input."""
import itertools
import math

import numpy as np
import pytest
import scipy.ndimage as ndi

import petfast
from petfast import _arrays

from _testdata import organ_maps

DTYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64]


def grid(spacing, origin=(0.0, 0.0, 0.0), flip=(1, 1, 1), rotation_deg=0.0):
    """A voxel-to-world affine: diagonal spacing with optional axis flips and an in-plane rotation."""
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(spacing, float) * np.asarray(flip, float))
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    a[:3, :3] = rot @ a[:3, :3]
    a[:3, 3] = origin
    return a


def scipy_reference(image, src_affine, dst_shape, dst_affine, order, fill):
    m = np.linalg.inv(src_affine) @ dst_affine
    out = ndi.affine_transform(np.asarray(image, np.float64), m[:3, :3], m[:3, 3], output_shape=dst_shape,
                               order=order, mode="constant", cval=fill)
    return out


# (name, source affine, destination shape, destination affine): the geometries the issue names.
CASES = {
    "identity": (grid((1, 1, 1)), (21, 18, 15), grid((1, 1, 1))),
    "flipped LAS to RAS": (grid((1.5, 1.5, 2.0), origin=(30, -10, 5), flip=(-1, 1, 1)), (23, 19, 17),
                           grid((1.5, 1.5, 2.0), origin=(-3, -10, 5))),
    "anisotropic downsample": (grid((0.98, 0.98, 1.5)), (13, 11, 9), grid((2.0364, 2.0364, 3.0), origin=(0.3, 0.2, 0.1))),
    "upsample": (grid((2.0, 2.0, 3.0)), (41, 37, 29), grid((0.9, 1.1, 1.2), origin=(-1.0, 0.5, -2.0))),
    "oblique": (grid((1.0, 1.2, 1.5)), (25, 22, 14), grid((1.1, 1.1, 1.6), origin=(4, -3, 2), rotation_deg=17)),
    "shifted half FOV": (grid((1, 1, 1)), (20, 20, 16), grid((1, 1, 1), origin=(9.5, -6.25, 3.0))),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("order", [0, 1, 3])
def test_matches_scipy(case, order, rng):
    src_affine, dst_shape, dst_affine = CASES[case]
    image = rng.normal(0, 100, (27, 23, 19)).astype(np.float32)
    out = petfast.resample(image, src_affine, dst_shape, dst_affine, order=order, fill=-1024)
    ref = scipy_reference(image, src_affine, dst_shape, dst_affine, order, -1024.0)
    assert out.shape == dst_shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-3 if order == 3 else 1e-4, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", [0, 1, 3])
def test_dtypes(dtype, order, rng):
    src_affine, dst_shape, dst_affine = CASES["oblique"]
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-3000, 3000)
    image = rng.integers(max(lo, -3000), min(hi, 3000), (27, 23, 19)).astype(dtype)
    fill = 0 if dtype == np.uint8 else -7
    out = petfast.resample(image, src_affine, dst_shape, dst_affine, order=order, fill=fill)
    assert out.dtype == (np.dtype(dtype) if order == 0 else np.float32)
    ref = scipy_reference(image, src_affine, dst_shape, dst_affine, order, float(fill))
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=0.05 if order == 3 else 1e-3, rtol=1e-6)


def layouts(image):
    yield "C", image
    yield "Fortran", np.asfortranarray(image)
    yield "strided", np.ascontiguousarray(np.repeat(image, 2, axis=1))[:, ::2, :]
    yield "negative strides", np.ascontiguousarray(image[::-1, :, ::-1])[::-1, :, ::-1]
    yield "big-endian", image.astype(image.dtype.newbyteorder(">"))
    yield "transposed view", np.ascontiguousarray(image.transpose(2, 0, 1)).transpose(1, 2, 0)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_memory_layouts_give_identical_results(order, rng):
    src_affine, dst_shape, dst_affine = CASES["anisotropic downsample"]
    image = rng.integers(-1024, 2000, (27, 23, 19)).astype(np.int16)
    expected = petfast.resample(image, src_affine, dst_shape, dst_affine, order=order)
    for name, variant in layouts(image):
        np.testing.assert_array_equal(variant, image)
        got = petfast.resample(variant, src_affine, dst_shape, dst_affine, order=order)
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("order", [0, 1, 3])  # cubic samples in C order and then copies into Fortran order
def test_fortran_input_gives_fortran_output(rng, order):
    image = np.asfortranarray(rng.normal(size=(10, 11, 12)).astype(np.float32))
    out = petfast.resample(image, np.eye(4), (7, 8, 9), grid((1.3, 1.3, 1.3)), order=order)
    assert out.flags.f_contiguous
    c_out = petfast.resample(np.ascontiguousarray(image), np.eye(4), (7, 8, 9), grid((1.3,) * 3), order=order)
    assert c_out.flags.c_contiguous
    np.testing.assert_array_equal(out, c_out)


def test_every_output_voxel_is_written(monkeypatch, rng):
    real_empty = _arrays.empty

    def poisoned(like, shape, dtype, **kw):
        a = real_empty(like, shape, dtype, **kw)
        a.obj[...] = 12345
        return a

    monkeypatch.setattr(_arrays, "empty", poisoned)
    image = rng.normal(size=(15, 16, 17)).astype(np.float32)
    for order in (0, 1, 3):
        for case in CASES.values():
            out = petfast.resample(image, case[0], case[1], case[2], order=order, fill=-1)
            assert not np.any(out == 12345)


def test_edge_rule_is_scipy_constant():
    """Samples within [0, n-1] (centres of the first and last voxel) interpolate; beyond is fill."""
    values = np.arange(1, 6, dtype=np.float32).reshape(5, 1, 1)
    positions = [-0.6, -0.5, -1e-7, 0.0, 3.5, 4.0, 4.0 + 1e-7, 4.4, 4.5, 4.6]
    for order in (0, 1, 3):
        for p in positions:
            dst = np.eye(4)
            dst[0, 3] = p
            got = float(petfast.resample(values, np.eye(4), (1, 1, 1), dst, order=order, fill=-99)[0, 0, 0])
            ref = float(ndi.map_coordinates(values[:, 0, 0].astype(float), [[p]], order=order, mode="constant", cval=-99)[0])
            if abs(p) < 1e-6 or abs(p - 4) < 1e-6:  # rounding tolerance: the edge centres stay inside
                ref = float(ndi.map_coordinates(values[:, 0, 0].astype(float), [[min(max(p, 0), 4)]], order=order)[0])
            assert got == pytest.approx(ref, abs=1e-5), (order, p)


def test_grid_sharing_a_border_keeps_it():
    """A destination whose last voxel centre coincides with the source's, up to rounding, is not lost."""
    image = np.arange(10 * 4 * 4, dtype=np.float32).reshape(10, 4, 4)
    src = grid((0.1, 0.1, 0.1))
    dst = grid((0.3, 0.1, 0.1))  # 0.3 * 3 / 0.1 = 8.999999999999998 or 9.000000000000002 in floating point
    out = petfast.resample(image, src, (4, 4, 4), dst, order=1, fill=-1)
    np.testing.assert_allclose(out[:, 0, 0], image[[0, 3, 6, 9], 0, 0], atol=1e-3)


def test_identical_grids_copy_exactly(rng):
    image = rng.integers(-1024, 3000, (13, 14, 15)).astype(np.int16)
    a = grid((0.977, 0.977, 3.27), origin=(250.3, -120.1, 17.0), flip=(-1, 1, 1))
    for order in (0, 1):
        np.testing.assert_array_equal(petfast.resample(image, a, image.shape, a, order=order), image)
    # The cubic spline through float32 coefficients reproduces its knots to float rounding.
    np.testing.assert_allclose(petfast.resample(image, a, image.shape, a, order=3), image, atol=1e-3)


@pytest.mark.parametrize("case", ["flipped LAS to RAS", "anisotropic downsample", "oblique", "upsample"])
def test_linear_matches_simpleitk_inside_fov(case, rng):
    sitk = pytest.importorskip("SimpleITK")
    src_affine, dst_shape, dst_affine = CASES[case]
    image = rng.integers(-1024, 2000, (27, 23, 19)).astype(np.int16)

    def to_sitk(array, affine):
        # nibabel (i, j, k) RAS affine -> ITK image (x, y, z) LPS; GetImageFromArray wants (k, j, i).
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
        lps = np.diag([-1, -1, 1]) @ affine[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        img.SetSpacing(spacing.tolist())
        img.SetDirection((lps / spacing).ravel().tolist())
        img.SetOrigin((np.diag([-1, -1, 1]) @ affine[:3, 3]).tolist())
        return img

    reference = to_sitk(np.zeros(dst_shape, np.float32), dst_affine)
    moving = sitk.Cast(to_sitk(image, src_affine), sitk.sitkFloat32)
    ref = sitk.GetArrayFromImage(sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, -5000.0)).transpose(2, 1, 0)
    out = petfast.resample(image, src_affine, dst_shape, dst_affine, order=1, fill=-5000)
    both_inside = (ref != -5000) & (out != -5000)
    assert both_inside.mean() > 0.3
    np.testing.assert_allclose(out[both_inside], ref[both_inside], atol=1e-3, rtol=0)
    # Outside SimpleITK's extent (half a voxel beyond the outer centres) petfast fills too.
    assert np.all(out[ref == -5000] == -5000)


def organ_grid_cases():
    cases = []
    for path in organ_maps():
        cases.append(pytest.param(path, id=path.name.split(".")[0]))
    return cases


def crop_grid(affine, start):
    a = affine.copy()
    a[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    return a


@pytest.mark.skipif(not organ_maps(), reason="../shared/data/organs not present")
@pytest.mark.parametrize("path", organ_grid_cases())
def test_autopet_ctres_parity_with_nilearn(path, rng):
    """order=3 with fill -1024 reproduces nilearn.image.resample_to_img(ct, pet, fill_value=-1024)."""
    nib = pytest.importorskip("nibabel")
    nilearn_image = pytest.importorskip("nilearn.image")
    organs = nib.load(path)
    pet_affine_full = organs.affine
    # A 48x40x24 block of the real PET grid around the body centre, and a CT on its own finer grid
    # (0.977 mm, 1.5 mm slices, the PET's orientation) that starts inside that block, so
    # both the interior and the CT's field-of-view edge are compared.
    centre = np.array(organs.shape) // 2
    pet_start = centre - [24, 20, 12]
    pet_shape = (48, 40, 24)
    pet_affine = crop_grid(pet_affine_full, pet_start)
    labels = np.asarray(organs.dataobj)
    ct_affine = np.diag(np.append(np.sign(np.diag(pet_affine_full))[:3] * [0.977, 0.977, 1.5], 1.0))
    ct_affine[:3, 3] = pet_affine[:3, :3] @ [3.3, 2.6, 1.4] + pet_affine[:3, 3]
    ct_shape = (96, 80, 40)
    # CT anatomy from the organ labels (nearest), HU per organ, air outside the body, scanner noise.
    hu = np.array([-20, 45, 35, 55, 10, -850, 30, 40, 25, 35, 30], np.float32)
    lab = petfast.resample(labels, pet_affine_full, ct_shape, ct_affine, order=0, fill=0)
    ct = (hu[lab] + rng.normal(0, 15, ct_shape)).astype(np.int16)
    ct[:5] = -1024  # a band of air so that the CT's range includes the fill value, as in real scans
    ct_img = nib.Nifti1Image(ct, ct_affine)
    pet_img = nib.Nifti1Image(np.zeros(pet_shape, np.float32), pet_affine)

    def nilearn_ctres(fill):
        with pytest.warns(UserWarning, match="Casting"):  # nilearn casts int16 to float32, as for autoPET
            return np.asarray(nilearn_image.resample_to_img(ct_img, pet_img, fill_value=fill).dataobj)

    ref = nilearn_ctres(-1024)
    out = petfast.resample_ct_to_pet(ct, ct_affine, pet_shape, pet_affine, order=3)
    assert out.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-3, rtol=0)
    # The field-of-view edge: the same voxels are filled, seen with a fill value no sample can take.
    fov_ref = nilearn_ctres(-5000) == -5000
    fov_out = petfast.resample(ct, ct_affine, pet_shape, pet_affine, order=3, fill=-5000) == -5000
    assert 0.05 < fov_out.mean() < 0.9  # both the inside and the outside are exercised
    np.testing.assert_array_equal(fov_out, fov_ref)


def test_antialias_matches_scipy_gaussian_then_linear(rng):
    src_affine, dst_shape, dst_affine = grid((0.98, 0.98, 1.5)), (13, 11, 9), grid((2.0364, 2.0364, 3.0))
    image = rng.normal(0, 12, (27, 23, 19)).astype(np.float32)
    m = np.linalg.inv(src_affine) @ dst_affine
    k = np.diag(m)[:3]
    sigma = np.sqrt((k * k - 1) / (8 * math.log(2)))
    smoothed = ndi.gaussian_filter(image.astype(np.float64), sigma, mode="nearest", truncate=4.0)
    ref = ndi.affine_transform(smoothed, m[:3, :3], m[:3, 3], output_shape=dst_shape, order=1, cval=0)
    out = petfast.resample(image, src_affine, dst_shape, dst_affine, order=1, antialias=True)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    plain = petfast.resample(image, src_affine, dst_shape, dst_affine, order=1)
    assert out.std() < 0.8 * plain.std()  # the point of antialiasing: less aliased noise


def test_antialias_is_a_no_op_when_upsampling(rng):
    image = rng.normal(size=(10, 10, 10)).astype(np.float32)
    a = petfast.resample(image, grid((2, 2, 2)), (15, 15, 15), grid((1, 1, 1)), antialias=True)
    b = petfast.resample(image, grid((2, 2, 2)), (15, 15, 15), grid((1, 1, 1)))
    np.testing.assert_array_equal(a, b)


def test_ct_to_pet_fills_air():
    ct = np.zeros((4, 4, 4), np.int16)
    out = petfast.resample_ct_to_pet(ct, np.eye(4), (8, 4, 4), np.eye(4))
    assert np.all(out[4:] == -1024) and np.all(out[:4] == 0)


def test_thread_count_does_not_change_results(rng):
    image = rng.integers(-1024, 2000, (40, 37, 33)).astype(np.int16)
    src_affine, dst_shape, dst_affine = CASES["oblique"]
    before = petfast.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            petfast.set_num_threads(n)
            results.append([petfast.resample(image, src_affine, dst_shape, dst_affine, order=o, antialias=o > 0)
                            for o in (0, 1, 3)])
    finally:
        petfast.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def _prefilter(image, pad=(0, 0, 0)):
    """petfast's B-spline coefficients of ``image`` edge-padded by ``pad`` voxels per axis."""
    src = _arrays.adapt(image, "image")
    coef = _arrays.empty(src, [n + 2 * p for n, p in zip(image.shape, pad)], np.float32, axis_order=(0, 1, 2))
    petfast._C.bspline_prefilter(src.spec(), coef.spec(), src.stream())
    return coef.obj


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_padded_prefilter_equals_scipy_and_the_unpadded_path(dtype, rng):
    """The prefilter's own edge padding (the Predictor's resize) equals scipy's spline_filter of the
    padded array, and equals padding first and filtering in place bit for bit, in every layout."""
    image = rng.integers(0, 200, (19, 17, 23)).astype(dtype)
    pad = (3, 0, 5)
    padded = np.pad(image, [(p, p) for p in pad], mode="edge")
    ref = ndi.spline_filter(padded.astype(np.float64), order=3, mode="mirror")
    expected = np.ascontiguousarray(padded, np.float32)
    src = _arrays.adapt(expected, "padded")
    petfast._C.bspline_prefilter(src.spec(), src.spec(), src.stream())  # in place
    np.testing.assert_allclose(expected, ref, rtol=0, atol=1e-3)
    for name, variant in layouts(image):
        np.testing.assert_array_equal(_prefilter(variant, pad), expected, err_msg=name)


def test_prefilter_rejects_odd_padding_and_padded_in_place(rng):
    image = rng.normal(size=(6, 7, 8)).astype(np.float32)
    src = _arrays.adapt(image, "image")
    coef = _arrays.empty(src, (7, 7, 8), np.float32)
    with pytest.raises(ValueError, match="even padding"):
        petfast._C.bspline_prefilter(src.spec(), coef.spec(), 0)
    shorter = _arrays.adapt(image[:-2], "view")  # same memory, 2 slices fewer: padding in place
    with pytest.raises(ValueError, match="in place"):
        petfast._C.bspline_prefilter(shorter.spec(), src.spec(), 0)


def test_torch_cpu_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    image = rng.normal(size=(12, 13, 14)).astype(np.float32)
    src_affine, dst_shape, dst_affine = CASES["oblique"]
    for order in (0, 1, 3):
        t = petfast.resample(torch.from_numpy(image), src_affine, dst_shape, dst_affine, order=order)
        assert isinstance(t, torch.Tensor) and t.device.type == "cpu" and tuple(t.shape) == dst_shape
        np.testing.assert_array_equal(t.numpy(), petfast.resample(image, src_affine, dst_shape, dst_affine, order=order))
    # A non-contiguous tensor view (permuted) reads in place.
    tp = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 1, 0))).permute(2, 1, 0)
    np.testing.assert_array_equal(petfast.resample(tp, src_affine, dst_shape, dst_affine).numpy(),
                                  petfast.resample(image, src_affine, dst_shape, dst_affine))
    # Affines may be tensors too.
    petfast.resample(image, torch.from_numpy(src_affine), dst_shape, torch.from_numpy(dst_affine))


BAD = [
    ("2-D image", dict(image=np.zeros((4, 4), np.float32)), ValueError, "3-D"),
    ("4-D image", dict(image=np.zeros((4, 4, 4, 2), np.float32)), ValueError, "3-D"),
    ("empty image", dict(image=np.zeros((0, 4, 4), np.float32)), ValueError, "empty"),
    ("bool dtype", dict(image=np.zeros((4, 4, 4), bool)), TypeError, "dtype"),
    ("int64 dtype", dict(image=np.zeros((4, 4, 4), np.int64)), TypeError, "supported"),
    ("complex dtype", dict(image=np.zeros((4, 4, 4), np.complex64)), TypeError, "dtype"),
    ("string array", dict(image=[[["a"]]]), TypeError, "not supported"),
    ("singular src affine", dict(src_affine=np.diag([1, 0, 1, 1.0])), ValueError, "singular"),
    ("NaN dst affine", dict(dst_affine=np.full((4, 4), np.nan)), ValueError, "NaN"),
    ("inf src affine", dict(src_affine=np.diag([1, np.inf, 1, 1.0])), ValueError, "NaN or infinite"),
    ("3x3 affine", dict(dst_affine=np.eye(3)), ValueError, "4x4"),
    ("bad last row", dict(dst_affine=np.ones((4, 4))), ValueError, "last row"),
    ("zero-size shape", dict(dst_shape=(4, 0, 4)), ValueError, "positive"),
    ("negative shape", dict(dst_shape=(4, -2, 4)), ValueError, "positive"),
    ("2 axes shape", dict(dst_shape=(4, 4)), ValueError, "3 axes"),
    ("non-numeric shape", dict(dst_shape=("a", 4, 4)), TypeError, "3 integers"),
    ("fractional shape", dict(dst_shape=(4.5, 4, 4)), ValueError, "whole numbers"),
    ("order 2", dict(order=2), ValueError, "order"),
    ("fill outside uint8", dict(image=np.zeros((4, 4, 4), np.uint8), order=0, fill=-1024), ValueError, "fit"),
    ("antialias labels", dict(order=0, antialias=True), ValueError, "antialias"),
    ("output too large", dict(dst_shape=(100000, 100000, 100000)), MemoryError, "does not fit"),
]


@pytest.mark.parametrize("name,kwargs,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, kwargs, error, match):
    args = dict(image=np.zeros((4, 4, 4), np.float32), src_affine=np.eye(4), dst_shape=(3, 3, 3),
                dst_affine=np.eye(4), order=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        petfast.resample(**args)


def test_output_too_large_is_also_a_value_error():
    with pytest.raises(ValueError):
        petfast.resample(np.zeros((4, 4, 4), np.float32), np.eye(4), (100000, 100000, 100000), np.eye(4))


def test_nibabel_image_gets_a_hint(tmp_path):
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(TypeError, match="dataobj"):
        petfast.resample(img, np.eye(4), (3, 3, 3), np.eye(4))


def test_cuda_tensor_without_cuda_kernels_is_a_type_error(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(petfast._C, "cuda_built", lambda: False)
    fake = torch.zeros(4, 4, 4)
    monkeypatch.setattr(type(fake), "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.raises(TypeError, match="without CUDA"):
        petfast.resample(fake, np.eye(4), (3, 3, 3), np.eye(4))


# --- CUDA against the CPU twin (skipped without a GPU) ------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_cuda_matches_cpu(case, order, dtype, rng):
    torch = pytest.importorskip("torch")
    src_affine, dst_shape, dst_affine = CASES[case]
    image = rng.integers(0, 250, (27, 23, 19)).astype(dtype)
    cpu = petfast.resample(image, src_affine, dst_shape, dst_affine, order=order, fill=3)
    gpu = petfast.resample(torch.from_numpy(image).cuda(), src_affine, dst_shape, dst_affine, order=order, fill=3)
    assert gpu.is_cuda and gpu.dtype == torch.from_numpy(cpu).dtype
    if order == 0:
        np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)
    else:
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-3 if order == 3 else 1e-4, rtol=1e-6)


@pytest.mark.cuda
def test_cuda_strided_views_antialias_and_stream(rng):
    torch = pytest.importorskip("torch")
    image = rng.integers(-1024, 2000, (40, 36, 30)).astype(np.int16)
    src_affine, dst_shape, dst_affine = grid((0.98, 0.98, 1.5)), (20, 17, 15), grid((2.0364, 2.0364, 3.0))
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).cuda().permute(1, 2, 0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for order in (1, 3):
            gpu = petfast.resample(t, src_affine, dst_shape, dst_affine, order=order, antialias=True)
            cpu = petfast.resample(image, src_affine, dst_shape, dst_affine, order=order, antialias=True)
            stream.synchronize()
            np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=2e-3, rtol=1e-6)


@pytest.mark.cuda
def test_cuda_padded_prefilter_equals_cpu(rng):
    torch = pytest.importorskip("torch")
    image = rng.integers(-1024, 2000, (33, 29, 31)).astype(np.int16)
    for pad in ((0, 0, 0), (12, 12, 12), (2, 0, 4)):
        cpu = _prefilter(image, pad)
        gpu = _prefilter(torch.from_numpy(image).cuda(), pad)
        # Each line's recursion is the CPU's, but nvcc and gcc contract multiply-adds differently.
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu, rtol=1e-6, atol=1e-3, err_msg=str(pad))


@pytest.mark.cuda
@pytest.mark.skipif(not organ_maps(), reason="../shared/data/organs not present")
def test_cuda_matches_cpu_on_real_grids():
    torch = pytest.importorskip("torch")
    nib = pytest.importorskip("nibabel")
    for path in organ_maps():
        img = nib.load(path)
        labels = np.asarray(img.dataobj)
        # A CT-like grid twice as fine in-plane over the central 64x64x48 block of the PET grid.
        ct_affine = crop_grid(img.affine, np.array(labels.shape) // 2 - [32, 32, 24]) @ np.diag([0.5, 0.5, 0.75, 1.0])
        ct_shape = (128, 128, 64)
        for order in (0, 1):
            cpu = petfast.resample(labels, img.affine, ct_shape, ct_affine, order=order)
            gpu = petfast.resample(torch.from_numpy(labels).cuda(), img.affine, ct_shape, ct_affine, order=order)
            np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-4)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_axis_aligned_fast_path_equals_generic_path(order, rng):
    """Axis-aligned maps take a tabulated CPU path; a 1e-300 shear (numerically nothing) forces the
    generic per-voxel path, and the two must agree bit for bit."""
    image = rng.integers(-1024, 2000, (31, 29, 23)).astype(np.int16)
    for src_affine, dst_shape, dst_affine in [CASES[c] for c in ("flipped LAS to RAS", "anisotropic downsample", "upsample")]:
        sheared = dst_affine.copy()
        sheared[0, 1] = 1e-300
        fast = petfast.resample(image, src_affine, dst_shape, dst_affine, order=order)
        generic = petfast.resample(image, src_affine, dst_shape, sheared, order=order)
        np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("layout", ["C", "Fortran"])
def test_cubic_passes_equal_the_per_voxel_sum_for_permuted_maps(layout, rng):
    """Axis-aligned cubic maps run as three 1-D passes (into scratch and a transpose when the output's
    fastest axis is not the one they stream along); the per-voxel tensor-product sum, forced by a
    1e-300 shear, must agree bit for bit for every axis permutation and flip."""
    image = rng.normal(size=(13, 11, 9)).astype(np.float32)
    image = image if layout == "C" else np.asfortranarray(image)
    for perm in itertools.permutations(range(3)):
        dst = np.zeros((4, 4))
        dst[3, 3] = 1.0
        for a, (b, z) in enumerate(zip(perm, (0.6, -0.6, 0.55))):
            dst[a, b] = z
        dst[:3, 3] = [1.0, 9.0, 0.5]
        sheared = dst.copy()
        sheared[0, (perm[0] + 1) % 3] = 1e-300  # a zero entry of row 0
        fast = petfast.resample(image, np.eye(4), (10, 12, 14), dst, order=3, fill=-5)
        generic = petfast.resample(image, np.eye(4), (10, 12, 14), sheared, order=3, fill=-5)
        assert fast.flags.f_contiguous == (layout == "Fortran")
        assert (fast != -5).mean() > 0.3, perm  # most samples inside the image
        np.testing.assert_array_equal(fast, generic, err_msg=str(perm))
