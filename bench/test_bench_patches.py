"""Sliding-window gather and scatter-accumulate: petfast against plain torch indexing loops.

8 tiles of 2 x 128^3 from a 2 x 326x400x400 float32 volume (--full), or 2 x 64^3 from 2 x 163x200x200.
Throughput is reported as GB/s of tile bytes moved in extra_info. On a GPU, each kernel's effective
bandwidth (the bytes it must read and write, per second) is also set against a device-to-device copy
of the tile bytes in the same run: issue 5's "at least 60 % of a copy".
"""
import numpy as np
import pytest

import petfast
from petfast import patches

from _benchdata import cuda_times, synced

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(full):
    shape, patch = ((326, 400, 400), (128, 128, 128)) if full else ((163, 200, 200), (64, 64, 64))
    rng = np.random.default_rng(0)
    volume = torch.from_numpy(rng.normal(size=(2,) + shape).astype(np.float32))
    origins = patches.tile_origins(shape, patch)[:8]
    tiles = patches.gather_tiles(volume, origins, patch)
    g = torch.from_numpy(patches.gaussian_importance_map(patch))
    return volume, origins, patch, tiles, g


def _gb(tiles):
    return tiles.numel() * 4 / 1e9


def _torch_gather(volume, origins, patch):
    return torch.stack([volume[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in origins])


def _torch_accumulate(acc, weight, tiles, origins, g, patch):
    for t, (z, y, x) in zip(tiles, origins):
        sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        acc[(slice(None),) + sl] += t * g
        weight[sl] += g


def test_cpu_gather_petfast(benchmark, record, setup):
    volume, origins, patch, tiles, _ = setup
    benchmark.group = "tiles-gather-cpu"
    benchmark(patches.gather_tiles, volume, origins, patch)
    benchmark.extra_info["GB/s"] = _gb(tiles) / benchmark.stats.stats.median
    record(benchmark.group, "petfast")


def test_cpu_gather_torch(benchmark, record, setup):
    volume, origins, patch, tiles, _ = setup
    benchmark.group = "tiles-gather-cpu"
    benchmark(_torch_gather, volume, origins, patch)
    record(benchmark.group, "torch slicing + stack")


def test_cpu_accumulate_petfast(benchmark, record, setup):
    volume, origins, patch, tiles, g = setup
    acc, weight = torch.zeros_like(volume), torch.zeros(volume.shape[1:])
    benchmark.group = "tiles-accumulate-cpu"
    benchmark(patches.accumulate_tiles, acc, weight, tiles, origins, g)
    benchmark.extra_info["GB/s"] = _gb(tiles) / benchmark.stats.stats.median
    record(benchmark.group, "petfast")


def test_cpu_accumulate_torch(benchmark, record, setup):
    volume, origins, patch, tiles, g = setup
    acc, weight = torch.zeros_like(volume), torch.zeros(volume.shape[1:])
    benchmark.group = "tiles-accumulate-cpu"
    benchmark(_torch_accumulate, acc, weight, tiles, origins, g, patch)
    record(benchmark.group, "torch slicing loop")


cuda = pytest.mark.skipif(not petfast.cuda_available(), reason="needs the CUDA kernels and a CUDA device")


@cuda
def test_gpu_gather_and_accumulate(benchmark, record, setup):
    volume, origins, patch, tiles, g = setup
    v, t, gg = volume.cuda(), tiles.cuda(), g.cuda()
    acc, weight = torch.zeros_like(v), torch.zeros(v.shape[1:], device="cuda")

    def step():
        patches.gather_tiles(v, origins, patch)
        patches.accumulate_tiles(acc, weight, t, origins, gg)

    benchmark.group = "tiles-gpu"
    benchmark(synced(step))
    benchmark.extra_info["GB/s"] = 2 * _gb(tiles) / benchmark.stats.stats.median
    record(benchmark.group, "petfast")


_CALLS = 10  # back to back per timing: the host's Python overhead overlaps the GPU work, as in a sliding window


def _gpu_seconds_per_call(fn):
    """GPU seconds per call of fn over _CALLS calls back to back, best of 5."""
    return min(cuda_times(lambda: [fn() for _ in range(_CALLS)], runs=5)) / _CALLS


@cuda
@pytest.mark.parametrize("kernel", ["gather", "accumulate"])
def test_gpu_tiles_bandwidth(benchmark, setup, kernel):
    volume, origins, patch, tiles, g = setup
    v, t, gg = volume.cuda(), tiles.cuda(), g.cuda()
    acc, weight = torch.zeros_like(v), torch.zeros(v.shape[1:], device="cuda")
    tile_bytes = t.numel() * 4
    if kernel == "gather":
        moved = 2 * tile_bytes  # read from the volume, written to the batch

        def call():
            patches.gather_tiles(v, origins, patch)
    else:
        # the tiles read; their part of the accumulator and of the weights read and written; the
        # Gaussian read once per tile
        moved = 3 * tile_bytes + 2 * tile_bytes // t.shape[1] + gg.numel() * 4 * len(origins)

        def call():
            patches.accumulate_tiles(acc, weight, t, origins, gg)

    src = torch.empty(t.numel(), device="cuda")
    dst = torch.empty_like(src)
    copy_gbs = 2 * tile_bytes / _gpu_seconds_per_call(lambda: dst.copy_(src)) / 1e9
    benchmark.group = "tiles-gpu-bandwidth"
    benchmark(synced(lambda: [call() for _ in range(_CALLS)]))
    gbs = moved / (benchmark.stats.stats.median / _CALLS) / 1e9
    benchmark.extra_info.update({"GB/s": gbs, "copy GB/s": copy_gbs, "of copy bandwidth": gbs / copy_gbs})


@cuda
def test_gpu_torch_loops(benchmark, record, setup):
    volume, origins, patch, tiles, g = setup
    v, t, gg = volume.cuda(), tiles.cuda(), g.cuda()
    acc, weight = torch.zeros_like(v), torch.zeros(v.shape[1:], device="cuda")

    def step():
        _torch_gather(v, origins, patch)
        _torch_accumulate(acc, weight, t, origins, gg, patch)

    benchmark.group = "tiles-gpu"
    benchmark(synced(step))
    record(benchmark.group, "torch slicing loops")


@cuda
def test_gpu_copy_floor(benchmark, record, setup):
    _, _, _, tiles, _ = setup
    a = torch.empty(tiles.numel() * 2, device="cuda")
    b = torch.empty_like(a)
    benchmark.group = "tiles-gpu"
    benchmark(synced(b.copy_), a)
    record(benchmark.group, "copy of the tile bytes (floor)")
