"""Connected components and autoPET metrics: petfast against cc3d (CPU) and cupyx (GPU).

Masks: a real autoPET organ label map (../shared/data, else a synthetic tissue map on the same grid),
its binary union, and dense 50 % noise; 400x400x326 with --full, half of that per axis otherwise.
"""
import os

import numpy as np
import pytest

import petfast
from petfast import metrics, phantom



def _cc3d():
    """The CPU peer, imported per benchmark so that the GPU ones run where cc3d is absent."""
    return pytest.importorskip("cc3d")


def _organ_map(full):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _testdata import organ_maps

    paths = [p for p in organ_maps() if p.name.startswith("fdg")]
    if paths:
        from petfast import io

        organs = np.ascontiguousarray(io.load(paths[0]).data)
    else:
        organs = phantom.make_study("fdg", seed=0).tissue  # same Biograph mCT grid
    return organs if full else np.ascontiguousarray(organs[::2, ::2, ::2])


@pytest.fixture(scope="module")
def masks(full):
    return base_cases(full)


def base_cases(full):
    organs = _organ_map(full)
    rng = np.random.default_rng(0)
    return {"organs": organs, "organs-binary": (organs > 0).astype(np.uint8),
            "noise50": (rng.random(organs.shape) < 0.5).astype(np.uint8)}


CASES = ["organs", "organs-binary", "noise50"]


@pytest.fixture(scope="module")
def ccl_masks(masks):
    return ccl_cases(masks)


def ccl_cases(masks):
    """``masks`` plus the GPU peers' cases of ../shared/reference/ccl.md section 6 on the same grid:
    40 ellipsoids (radius 2-20 voxels, about 0.4 % foreground) and smoothed noise above its 70th
    percentile."""
    import scipy.ndimage as ndi

    shape = masks["noise50"].shape
    rng = np.random.default_rng(1)
    sparse = np.zeros(shape, np.uint8)
    for _ in range(40):
        r = rng.uniform(2, 20, 3) * np.asarray(shape) / 400
        c = rng.uniform(r, np.asarray(shape) - r)
        box = tuple(slice(int(ci - ri), int(ci + ri) + 1) for ci, ri in zip(c, r))
        grid = np.ogrid[box]
        sparse[box] |= (sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1).astype(np.uint8)
    smooth = ndi.gaussian_filter(rng.random(shape, np.float32), 2)
    blobs = (smooth > np.percentile(smooth, 70)).astype(np.uint8)
    return {**masks, "sparse": sparse, "blobs30": blobs}


GPU_CASES = [(case, 26) for case in ["sparse", "blobs30", "noise50", "organs", "organs-binary"]] + \
    [(case, c) for case in ["sparse", "blobs30", "noise50"] for c in (6, 18)]


# NIfTI files load Fortran-ordered: the labeller walks memory order and renumbers to raster order.
LAYOUTS = {"C": np.ascontiguousarray, "nifti": np.asfortranarray}


# 1 and 2 threads (the targets', and CI's 2 cores), and every core of a larger machine (the GPU
# machine's 16): how the labeller scales where it was never developed.
THREADS = sorted({1, 2, os.cpu_count() or 1})


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("threads", THREADS)
def test_cpu_petfast_label(benchmark, record, masks, case, threads, layout):
    mask = LAYOUTS[layout](masks[case])
    before = petfast.get_num_threads()
    petfast.set_num_threads(threads)
    try:
        benchmark.group = f"label26-cpu-{case}-{layout}"
        benchmark(petfast.label, mask, 26)
        record(benchmark.group, f"petfast {threads} thread{'s' if threads > 1 else ''}")
    finally:
        petfast.set_num_threads(before)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_cpu_cc3d_label(benchmark, record, masks, case, layout):
    cc3d = _cc3d()
    benchmark.group = f"label26-cpu-{case}-{layout}"
    benchmark(cc3d.connected_components, LAYOUTS[layout](masks[case]), connectivity=26)
    record(benchmark.group, "cc3d (1 thread)")


def _metrics_case(masks):
    gt = (masks["organs"] == masks["organs"].max()).astype(np.uint8)
    # A shifted copy (true positives, some false negative volume) plus about 100 small false positives.
    pred = np.roll(gt, 2, axis=0) | (np.random.default_rng(1).random(gt.shape) < 100 / gt.size).astype(np.uint8)
    return gt, pred



def test_cpu_petfast_remove_small(benchmark, record, masks):
    _, pred = _metrics_case(masks)  # an organ plus about 100 single-voxel specks
    benchmark.group = "remove-small-cpu"
    benchmark(petfast.remove_small, pred, min_voxels=10)
    record(benchmark.group, "petfast")


def test_cpu_cc3d_dust(benchmark, record, masks):
    cc3d = _cc3d()
    _, pred = _metrics_case(masks)
    benchmark.group = "remove-small-cpu"
    benchmark(cc3d.dust, pred, threshold=10, connectivity=26)
    record(benchmark.group, "cc3d.dust")



@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_petfast_metrics(benchmark, record, masks, layout):
    gt, pred = map(LAYOUTS[layout], _metrics_case(masks))
    benchmark.group = "autopet-metrics-cpu" + ("" if layout == "C" else "-nifti-order")
    benchmark(metrics.autopet, gt, pred, 0.0124)
    record(benchmark.group, "petfast")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_cc3d_metrics(benchmark, record, masks, layout):
    """The fast formulation with cc3d (label + bincount), not the official per-component loop."""
    cc3d = _cc3d()
    gt, pred = map(LAYOUTS[layout], _metrics_case(masks))

    def run():
        out = []
        for a, b in ((pred, gt), (gt, pred)):
            cc = cc3d.connected_components(a, connectivity=18)
            sizes = np.bincount(cc.ravel())
            hit = np.bincount(cc[b > 0], minlength=sizes.size)
            out.append(sizes[1:][hit[1:] == 0].sum() * 0.0124)
        return 2 * (gt & pred).sum() / (gt.sum() + pred.sum()), out

    benchmark.group = "autopet-metrics-cpu" + ("" if layout == "C" else "-nifti-order")
    benchmark(run)
    record(benchmark.group, "cc3d + bincount")


# The lesion table of a study, as quant.lesions and the metrics build it: 18-connectivity components
# of a lesion mask (and of an organ map), with voxels, volume, box, centroid and SUV max/mean/sum.
STATS_CASES = ["sparse", "organs"]
SPACING = (2.04, 2.04, 3.0)


def _suv(shape):
    return np.random.default_rng(2).random(shape, np.float32) * 10


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", STATS_CASES)
@pytest.mark.parametrize("fused", [True, False], ids=["label_with_stats", "label+component_stats"])
def test_cpu_petfast_label_stats(benchmark, record, ccl_masks, case, layout, fused):
    mask = LAYOUTS[layout](ccl_masks[case])
    pet = LAYOUTS[layout](_suv(mask.shape))

    def separate():
        labels, n = petfast.label(mask, 18)
        return petfast.component_stats(labels, pet, SPACING, count=n)

    benchmark.group = f"label18-stats-cpu-{case}-{layout}"
    benchmark((lambda: petfast.label_with_stats(mask, pet, SPACING, 18)) if fused else separate)
    record(benchmark.group, "petfast " + ("label_with_stats" if fused else "label + component_stats"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", STATS_CASES)
def test_cpu_cc3d_label_stats(benchmark, record, ccl_masks, case, layout):
    """cc3d's labelling and cc3d.statistics (voxels, box, centroid: no image statistics)."""
    cc3d = _cc3d()
    mask = LAYOUTS[layout](ccl_masks[case])
    benchmark.group = f"label18-stats-cpu-{case}-{layout}"
    benchmark(lambda: cc3d.statistics(cc3d.connected_components(mask, connectivity=18)))
    record(benchmark.group, "cc3d connected_components + statistics")


cuda = pytest.mark.skipif(not petfast.cuda_available(), reason="needs the CUDA kernels and a CUDA device")


@cuda
@pytest.mark.parametrize("case,connectivity", GPU_CASES)
def test_gpu_petfast_label(benchmark, record, ccl_masks, case, connectivity):
    import torch

    x = torch.from_numpy(ccl_masks[case]).cuda()
    run = lambda: petfast.label(x, connectivity)  # returns the count, which synchronises
    run()
    benchmark.group = f"label{connectivity}-gpu-{case}"
    benchmark(run)
    record(benchmark.group, "petfast")


@cuda
def test_gpu_petfast_label_fortran_tensor(benchmark, record, ccl_masks):
    """A Fortran-ordered tensor (NIfTI data moved to the GPU as it is): petfast labels a C-ordered
    copy. In the same group as the C-ordered run and cupyx, so the copy's cost shows."""
    import torch

    x = torch.from_numpy(np.asfortranarray(ccl_masks["sparse"])).cuda()
    run = lambda: petfast.label(x, 26)  # noqa: E731
    run()
    benchmark.group = "label26-gpu-sparse"
    benchmark(run)
    record(benchmark.group, "petfast, Fortran-ordered tensor")


@cuda
@pytest.mark.parametrize("case,connectivity", GPU_CASES)
def test_gpu_cupyx_label(benchmark, record, ccl_masks, case, connectivity):
    cp = pytest.importorskip("cupy")
    import cupyx.scipy.ndimage as cnd
    import scipy.ndimage as ndi

    x = cp.asarray(ccl_masks[case])
    structure = cp.asarray(ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity]))

    def run():
        out = cnd.label(x, structure)
        cp.cuda.Device().synchronize()
        return out

    run()
    benchmark.group = f"label{connectivity}-gpu-{case}"
    benchmark(run)
    record(benchmark.group, "cupyx.scipy.ndimage.label")


@cuda
@pytest.mark.parametrize("case", ["sparse", "organs", "blobs30"])
@pytest.mark.parametrize("fused", [True, False], ids=["label_with_stats", "label+component_stats"])
def test_gpu_petfast_label_and_stats(benchmark, record, ccl_masks, case, fused):
    """Labelling plus per-component voxels, volume, bounding box, centroid and SUV max/mean/sum:
    the lesion table of a whole-body study (target: at most 0.1 ms over labelling alone), and the
    tables of an organ map and of smoothed noise (2,451 components, the largest of 15.6 M voxels:
    more than label_with_stats' 1024 rows, so both take component_stats' pass)."""
    import torch

    x = torch.from_numpy(ccl_masks[case]).cuda()
    pet = torch.rand(x.shape, device="cuda") * 10

    def separate():
        labels, count = petfast.label(x, 26)
        return petfast.component_stats(labels, pet, SPACING, count=count)  # label's count: no pass to find it

    run = (lambda: petfast.label_with_stats(x, pet, SPACING, 26)) if fused else separate
    run()
    benchmark.group = f"label26-gpu-{case}"
    benchmark(run)
    record(benchmark.group, "petfast " + ("label_with_stats" if fused else "label + component_stats"))


@cuda
def test_gpu_copy_floor(benchmark, record, ccl_masks):
    """Reading the uint8 mask and writing int32 labels once: no labelling can beat this."""
    import torch

    x = torch.from_numpy(ccl_masks["sparse"]).cuda()
    out = torch.empty(x.shape, dtype=torch.int32, device="cuda")
    copy = lambda: (out.copy_(x), torch.cuda.synchronize())
    copy()
    benchmark.group = "label26-gpu-sparse"
    benchmark(copy)
    record(benchmark.group, "uint8 -> int32 copy (floor)")
