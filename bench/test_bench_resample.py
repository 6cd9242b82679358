"""CT -> PET grid resampling: petfast against SimpleITK (CPU) and grid_sample / cupyx (GPU)."""
import numpy as np
import pytest

import petfast

from _benchdata import synced, synthetic_ct, whole_body_grids


@pytest.fixture(scope="module")
def case(full):
    ct_shape, ct_affine, pet_shape, pet_affine = whole_body_grids(full)
    return synthetic_ct(ct_shape), ct_affine, pet_shape, pet_affine


# --- CPU: same thread count for petfast and SimpleITK ------------------------------------------

def test_cpu_petfast_trilinear(benchmark, record, case):
    ct, ct_affine, pet_shape, pet_affine = case
    benchmark.group = "resample-cpu-trilinear"
    benchmark.extra_info["threads"] = petfast.get_num_threads()
    benchmark(petfast.resample_ct_to_pet, ct, ct_affine, pet_shape, pet_affine, order=1)
    record(benchmark.group, "petfast")


def test_cpu_simpleitk_linear(benchmark, record, case):
    sitk = pytest.importorskip("SimpleITK")
    ct, ct_affine, pet_shape, pet_affine = case
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(petfast.get_num_threads())

    def to_sitk(array, affine):
        img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        lps = np.diag([-1, -1, 1]) @ affine[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        img.SetSpacing(spacing.tolist())
        img.SetDirection((lps / spacing).ravel().tolist())
        img.SetOrigin((np.diag([-1, -1, 1]) @ affine[:3, 3]).tolist())
        return img

    moving = to_sitk(ct, ct_affine)  # int16, as the scanner wrote it; output float32 like petfast
    reference = to_sitk(np.zeros(pet_shape, np.uint8), pet_affine)
    benchmark.group = "resample-cpu-trilinear"
    benchmark.extra_info["threads"] = petfast.get_num_threads()
    benchmark(sitk.Resample, moving, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    record(benchmark.group, "SimpleITK Resample linear")


@pytest.mark.parametrize("layout", ["C", "nifti"])
def test_cpu_petfast_cubic(benchmark, record, case, layout):
    ct, ct_affine, pet_shape, pet_affine = case
    ct = np.asfortranarray(ct) if layout == "nifti" else ct  # CTs load from NIfTI Fortran-ordered
    benchmark.group = "resample-cpu-cubic-parity"
    benchmark.pedantic(petfast.resample_ct_to_pet, (ct, ct_affine, pet_shape, pet_affine), {"order": 3},
                       rounds=3, iterations=1)
    record(benchmark.group, "petfast" if layout == "C" else "petfast, Fortran-ordered CT")


def test_cpu_nilearn_cubic(benchmark, record, case, full):
    if full:
        pytest.skip("nilearn's cubic resample takes tens of seconds at full size; run it by hand")
    nib = pytest.importorskip("nibabel")
    nilearn_image = pytest.importorskip("nilearn.image")
    ct, ct_affine, pet_shape, pet_affine = case
    ct_img = nib.Nifti1Image(ct, ct_affine)
    pet_img = nib.Nifti1Image(np.zeros(pet_shape, np.uint8), pet_affine)
    benchmark.group = "resample-cpu-cubic-parity"
    import warnings

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nilearn_image.resample_to_img(ct_img, pet_img, fill_value=-1024)

    benchmark.pedantic(run, rounds=3, iterations=1)
    record(benchmark.group, "nilearn resample_to_img")


# --- GPU: data already on the device ------------------------------------------------------------

cuda = pytest.mark.skipif(not petfast.cuda_available(), reason="needs the CUDA kernels and a CUDA device")


@pytest.fixture(scope="module")
def gpu_case(case):
    torch = pytest.importorskip("torch")
    ct, ct_affine, pet_shape, pet_affine = case
    return torch.from_numpy(ct).cuda(), ct_affine, pet_shape, pet_affine


@cuda
@pytest.mark.parametrize("order", [1, 3])
def test_gpu_petfast(benchmark, record, gpu_case, order):
    ct, ct_affine, pet_shape, pet_affine = gpu_case
    benchmark.group = f"resample-gpu-order{order}"
    run = synced(petfast.resample_ct_to_pet)
    run(ct, ct_affine, pet_shape, pet_affine, order=order)
    benchmark(run, ct, ct_affine, pet_shape, pet_affine, order=order)
    record(benchmark.group, "petfast")


@cuda
def test_gpu_grid_sample(benchmark, record, gpu_case):
    """torch grid_sample trilinear, counting the grid construction and the int16 -> float cast."""
    import torch
    import torch.nn.functional as F

    ct, ct_affine, pet_shape, pet_affine = gpu_case
    m = torch.tensor((np.linalg.inv(ct_affine) @ pet_affine)[:3], dtype=torch.float32, device="cuda")
    n_src = torch.tensor(ct.shape, dtype=torch.float32, device="cuda")

    def run():
        idx = torch.stack(torch.meshgrid(*[torch.arange(s, device="cuda", dtype=torch.float32) for s in pet_shape],
                                         indexing="ij"), -1)
        src_idx = idx @ m[:, :3].T + m[:, 3]
        norm = (2 * src_idx + 1) / n_src - 1  # align_corners=False
        grid = norm.flip(-1)[None]  # grid_sample wants (x=W, y=H, z=D)
        vol = (ct.float() + 1024)[None, None]
        out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0] - 1024
        torch.cuda.synchronize()
        return out

    run()
    benchmark.group = "resample-gpu-order1"
    benchmark(run)
    record(benchmark.group, "torch grid_sample (+grid, +cast)")


@cuda
@pytest.mark.parametrize("order", [1, 3])
def test_gpu_cupyx_affine_transform(benchmark, record, gpu_case, order):
    cp = pytest.importorskip("cupy")
    import cupyx.scipy.ndimage as cnd

    ct, ct_affine, pet_shape, pet_affine = gpu_case
    m = np.linalg.inv(ct_affine) @ pet_affine
    x = cp.asarray(ct.cpu().numpy())

    def run():
        out = cnd.affine_transform(x, cp.asarray(m[:3, :3]), m[:3, 3], output_shape=pet_shape, order=order,
                                   mode="constant", cval=-1024.0, output=cp.float32)
        cp.cuda.Device().synchronize()
        return out

    run()
    benchmark.group = f"resample-gpu-order{order}"
    benchmark(run)
    record(benchmark.group, "cupyx affine_transform")


@cuda
def test_gpu_copy_floor(benchmark, record, gpu_case):
    """A device-to-device copy of the bytes the job must move (int16 read + float32 write)."""
    import torch

    ct, _, pet_shape, _ = gpu_case
    n = ct.numel() * 2 + int(np.prod(pet_shape)) * 4
    a = torch.empty(n // 2, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    benchmark.group = "resample-gpu-order1"
    benchmark(synced(b.copy_), a)
    record(benchmark.group, "copy of the same bytes (floor)")
