"""petfast.label against cc3d and scipy; CUDA against the CPU twin; bad input."""
import multiprocessing
import os

import numpy as np
import pytest
import scipy.ndimage as ndi

import petfast

from _testdata import organ_maps

STRUCTURES = {6: ndi.generate_binary_structure(3, 1), 18: ndi.generate_binary_structure(3, 2),
              26: ndi.generate_binary_structure(3, 3)}


def reference(mask, connectivity):
    """cc3d on the C-ordered mask (cc3d numbers a Fortran array in memory order instead). Imported
    here, not at the top, so that the CUDA tests run where cc3d is not installed (the GPU machine)."""
    cc3d = pytest.importorskip("cc3d")
    return cc3d.connected_components(np.ascontiguousarray(mask), connectivity=connectivity)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("density", [0.02, 0.2, 0.45, 0.7])
def test_random_noise_matches_cc3d_and_scipy(connectivity, density, rng):
    mask = (rng.random((37, 29, 41)) < density).astype(np.uint8)
    labels, count = petfast.label(mask, connectivity)
    ref = reference(mask, connectivity)
    assert labels.dtype == np.int32 and count == ref.max()
    np.testing.assert_array_equal(labels, ref)
    sp, n = ndi.label(mask, STRUCTURES[connectivity])
    assert n == count
    np.testing.assert_array_equal(labels, sp)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_multilabel_joins_only_equal_values(connectivity, rng):
    mask = rng.integers(0, 4, (30, 31, 32)).astype(np.int16) * (rng.random((30, 31, 32)) < 0.6)
    labels, count = petfast.label(mask, connectivity)
    np.testing.assert_array_equal(labels, reference(mask, connectivity))
    # Two touching voxels of different values stay apart.
    two = np.zeros((1, 1, 2), np.uint8)
    two[0, 0] = [1, 2]
    assert petfast.label(two, connectivity)[1] == 2


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_second_value_midway_switches_from_the_binary_path(connectivity, dtype, rng):
    """The CPU labels one-valued masks by neighbour bit patterns until a second value turns up
    (here in the middle of each thread's slab, and inside rows); both halves must agree with cc3d."""
    mask = (rng.random((40, 70, 90)) < 0.5).astype(dtype) * 3
    mask[5:16, 30:, 50:77] *= ((rng.random((11, 40, 27)) < 0.5) + 1).astype(dtype)  # values 3 and 6 here
    mask[28:, 10:, 77:] *= 2  # and 6 only in the second 64-voxel word of later rows (another slab with 2 threads)
    ref = reference(mask, connectivity)
    before = petfast.get_num_threads()
    try:
        for threads in (1, 2, 3):
            petfast.set_num_threads(threads)
            np.testing.assert_array_equal(petfast.label(mask, connectivity)[0], ref)
            np.testing.assert_array_equal(petfast.label(np.asfortranarray(mask), connectivity)[0], ref)
    finally:
        petfast.set_num_threads(before)


def shapes():
    z = np.zeros((12, 12, 12), np.uint8)
    spiral = z.copy()
    t = np.linspace(0, 6 * np.pi, 400)
    spiral[(5.5 + 5 * np.cos(t)).astype(int), (5.5 + 5 * np.sin(t)).astype(int), (t / (6 * np.pi) * 11).astype(int)] = 1
    shell = z.copy()
    x, y, w = np.mgrid[:12, :12, :12]
    r = np.sqrt((x - 5.5) ** 2 + (y - 5.5) ** 2 + (w - 5.5) ** 2)
    shell[(r > 3.5) & (r < 4.5)] = 1
    shell[5, 5, 5] = 1  # an isolated core inside the shell
    edge = z.copy()  # touch along an edge: joined by 18 and 26, not by 6
    edge[2, 2, 2] = edge[3, 3, 2] = 1
    corner = z.copy()  # touch at a corner: joined by 26 only
    corner[2, 2, 2] = corner[3, 3, 3] = 1
    checker = ((x + y + w) % 2).astype(np.uint8)  # 6: every voxel alone; 18 and 26: one component
    return {"spiral": spiral, "shell": shell, "edge": edge, "corner": corner, "checker": checker,
            "empty": z, "full": np.ones_like(z), "thin": np.ones((1, 9, 1), np.uint8), "single": np.ones((1, 1, 1), np.uint8)}


@pytest.mark.parametrize("name", list(shapes()))
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_structured_shapes(name, connectivity):
    mask = shapes()[name]
    labels, count = petfast.label(mask, connectivity)
    np.testing.assert_array_equal(labels, reference(mask, connectivity))
    expected = {("edge", 6): 2, ("edge", 18): 1, ("edge", 26): 1, ("corner", 6): 2, ("corner", 18): 2,
                ("corner", 26): 1, ("empty", 6): 0, ("full", 26): 1, ("checker", 18): 1}
    if (name, connectivity) in expected:
        assert count == expected[(name, connectivity)]
    if name == "checker" and connectivity == 6:
        assert count == mask.sum()


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_layouts_and_threads_give_identical_labels(connectivity, rng):
    # 171k voxels: enough for 5 threads' slabs (the CPU labeller gives each thread at least 32k voxels).
    mask = (rng.random((70, 52, 47)) < 0.4).astype(np.uint8) * rng.integers(1, 3, (70, 52, 47)).astype(np.uint8)
    expected = reference(mask, connectivity)
    variants = {"C": mask, "Fortran": np.asfortranarray(mask), "strided": np.repeat(mask, 2, axis=2)[:, :, ::2],
                "negative": np.ascontiguousarray(mask[::-1])[::-1], "permuted": np.ascontiguousarray(mask.transpose(2, 0, 1)).transpose(1, 2, 0),
                "bool": mask.astype(bool) if mask.max() == 1 else mask, "float64": mask.astype(np.float64)}
    before = petfast.get_num_threads()
    try:
        for threads in (1, 2, 3, 5):
            petfast.set_num_threads(threads)
            for name, v in variants.items():
                labels, count = petfast.label(v, connectivity)
                np.testing.assert_array_equal(labels, expected, err_msg=f"{name}, {threads} threads")
    finally:
        petfast.set_num_threads(before)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_many_slabs_join_across_their_boundaries(connectivity, rng):
    # 16 threads' slabs of 8 planes: 15 boundary planes, whose rows are joined by all threads at
    # once in one union-find table. Densities below, near and above the percolation threshold, so
    # that components span few or all slabs, and a multi-label map (neighbours of another value
    # stay apart across a boundary too).
    shape = (128, 64, 64)
    masks = [(rng.random(shape) < d).astype(np.uint8) for d in (0.15, 0.3, 0.6)]
    masks.append((rng.random(shape) < 0.7) * rng.integers(1, 4, shape).astype(np.int16))
    before = petfast.get_num_threads()
    try:
        petfast.set_num_threads(16)
        for mask in masks:
            expected = reference(mask, connectivity)
            for _ in range(3):  # the threads' unions interleave differently from run to run
                labels, count = petfast.label(mask, connectivity)
                np.testing.assert_array_equal(labels, expected)
    finally:
        petfast.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_one_pass_extremes_equal_numpy(dtype, rng):
    # The multithreaded (min, max) behind the count of a label map and the mask checks: every
    # layout, every kernel dtype, and NaN (which numpy's min and max propagate) for floats.
    from petfast import _C, _arrays

    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    x = (rng.integers(info.min, int(info.max) + 1, (70, 65, 33)) if info else rng.normal(0, 1e3, (70, 65, 33))).astype(dtype)
    layouts = {"C": x, "F": np.asfortranarray(x), "strided": x[:, ::2, 1:], "reversed": x[::-1, :, ::-1],
               "permuted": x.transpose(2, 0, 1)}
    before = petfast.get_num_threads()
    try:
        for threads in (1, 3):
            petfast.set_num_threads(threads)
            for name, v in layouts.items():
                got = _C.extremes(_arrays.adapt(v, "v").spec())
                assert got == (float(v.min()), float(v.max())), (name, threads)
        if info is None:
            x[40, 7, 3] = np.nan
            assert all(map(np.isnan, _C.extremes(_arrays.adapt(np.asfortranarray(x), "v").spec())))
    finally:
        petfast.set_num_threads(before)


def _label_in_child(mask):
    return petfast.label(mask, 26)[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_threads_after_fork(rng):
    # The CPU kernels share a pool of worker threads. A child made by fork() (a DataLoader worker,
    # say) inherits the pool's state but none of its threads: it must label with a pool of its own,
    # and neither hang nor differ, also while the parent keeps using its pool.
    mask = (rng.random((64, 64, 64)) < 0.3).astype(np.uint8)
    before = petfast.get_num_threads()
    petfast.set_num_threads(4)
    try:
        expected = petfast.label(mask, 26)[0]  # the parent's pool is running now
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pending = [pool.apply_async(_label_in_child, (mask,)) for _ in range(4)]
            np.testing.assert_array_equal(petfast.label(mask, 26)[0], expected)
            for p in pending:
                np.testing.assert_array_equal(p.get(timeout=120), expected)
    finally:
        petfast.set_num_threads(before)


def test_fortran_input_keeps_its_layout(rng):
    mask = np.asfortranarray((rng.random((10, 11, 12)) < 0.3).astype(np.uint8))
    labels, _ = petfast.label(mask)
    assert labels.flags.f_contiguous


@pytest.mark.skipif(not organ_maps(), reason="../shared/data/organs not present")
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_real_organ_maps(connectivity):
    from petfast import io

    maps = organ_maps() if connectivity == 26 else organ_maps()[::3]  # all six grids once, two for 6 and 18
    for path in maps:
        organs = io.load(path).data  # Fortran-ordered, as nibabel stores it
        labels, count = petfast.label(organs, connectivity)
        assert count > 5 and np.array_equal(labels, reference(organs, connectivity)), path.name
        binary = petfast.label(organs > 0, connectivity)[0]
        assert np.array_equal(binary, reference((organs > 0).astype(np.uint8), connectivity)), path.name


def test_torch_cpu(rng):
    torch = pytest.importorskip("torch")
    mask = (rng.random((20, 21, 22)) < 0.3).astype(np.uint8)
    labels, count = petfast.label(torch.from_numpy(mask) > 0, 18)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int32
    np.testing.assert_array_equal(labels.numpy(), reference(mask, 18))
    # Statistics of torch tensors (their two tables share one buffer, viewed as float64 and int32)
    # equal those of the same numpy arrays.
    pet = rng.random(mask.shape, dtype=np.float32)
    expected = petfast.component_stats(labels.numpy(), pet, (2.0, 2.0, 3.0), count=count)
    got = petfast.component_stats(labels, torch.from_numpy(pet), (2.0, 2.0, 3.0), count=count)
    assert got.keys() == expected.keys() and got["bbox"].dtype == np.int32
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros((4, 4), np.uint8), ValueError, "3-D"),
    (np.zeros((0, 4, 4), np.uint8), ValueError, "empty"),
    (np.zeros((4, 4, 4), np.int64), TypeError, "supported"),
    (np.zeros((4, 4, 4), np.complex64), TypeError, "dtype"),
    (np.full((4, 4, 4), np.nan, np.float32), ValueError, "NaN"),  # else every NaN voxel is a component
])
def test_bad_masks(bad, error, match):
    with pytest.raises(error, match=match):
        petfast.label(bad)


def test_bad_tensors():
    torch = pytest.importorskip("torch")
    mask = torch.ones((4, 4, 4), dtype=torch.uint8)
    for bad, match in ((mask.to_sparse(), "sparse_coo tensors are not supported"), (mask.half(), "float16"),
                       (torch.ones((4, 4, 4), device="meta"), "on meta")):
        with pytest.raises(TypeError, match=match):
            petfast.label(bad)


def test_bad_connectivity():
    with pytest.raises(ValueError, match="6, 18 or 26"):
        petfast.label(np.zeros((3, 3, 3), np.uint8), connectivity=8)


@pytest.mark.cuda
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.6])
def test_cuda_matches_cpu(connectivity, density, rng):
    torch = pytest.importorskip("torch")
    mask = (rng.random((45, 38, 51)) < density).astype(np.uint8) * rng.integers(1, 3, (45, 38, 51)).astype(np.uint8)
    cpu, n_cpu = petfast.label(mask, connectivity)
    for variant in (torch.from_numpy(mask).cuda(), torch.from_numpy(np.asfortranarray(mask).T.copy()).cuda().T):
        gpu, n_gpu = petfast.label(variant, connectivity)
        assert gpu.is_cuda and n_gpu == n_cpu
        np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(shapes()))
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cuda_structured_shapes(name, connectivity):
    torch = pytest.importorskip("torch")
    mask = shapes()[name]
    cpu, n_cpu = petfast.label(mask, connectivity)
    gpu, n_gpu = petfast.label(torch.from_numpy(mask).cuda(), connectivity)
    assert n_gpu == n_cpu
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, bool])
def test_cuda_large_volumes_are_race_free(connectivity, dtype, rng):
    """Dense noise on a volume of many blocks, where unions from different threads collide most;
    labelled three times, each run must equal the CPU twin."""
    torch = pytest.importorskip("torch")
    mask = (rng.random((70, 150, 170)) < 0.5).astype(dtype)
    if dtype is not bool:
        mask = mask * rng.integers(1, 3, mask.shape).astype(dtype)  # multi-label: equal values join
    cpu, n_cpu = petfast.label(mask, connectivity)
    x = torch.from_numpy(mask).cuda()
    for _ in range(3):
        gpu, n_gpu = petfast.label(x, connectivity)
        assert n_gpu == n_cpu
        np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


@pytest.mark.cuda
@pytest.mark.skipif(not organ_maps(), reason="../shared/data/organs not present")
def test_cuda_real_organ_maps():
    torch = pytest.importorskip("torch")
    from petfast import io

    for path in organ_maps()[::2]:
        organs = io.load(path).data  # Fortran-ordered: the kernel reads it through its strides
        for connectivity in (6, 26):
            cpu, n_cpu = petfast.label(organs, connectivity)
            gpu, n_gpu = petfast.label(torch.from_numpy(organs).cuda(), connectivity)
            assert n_gpu == n_cpu > 5, path.name
            assert np.array_equal(gpu.cpu().numpy(), cpu), path.name


@pytest.mark.cuda
def test_cuda_remove_small_matches_cpu(rng):
    torch = pytest.importorskip("torch")
    mask = (rng.random((40, 41, 42)) < 0.25).astype(np.uint8)
    cpu = petfast.remove_small(mask, min_voxels=4, connectivity=6)
    gpu = petfast.remove_small(torch.from_numpy(mask).cuda(), min_voxels=4, connectivity=6)
    assert gpu.is_cuda and gpu.dtype == torch.uint8 and 0 < cpu.sum() < mask.sum()
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)
