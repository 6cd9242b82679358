"""Per-kernel GPU times (torch.profiler) of petfast's labelling on the GPU label benchmark's cases,
of component statistics, of the tile kernels, and of the fused instance norm against torch's norm
modules (float16, both layouts): which phase to work on next. Writes a text
report to the path given (bench/gpu/run.sh: $OUT/profile.txt).

    python bench/gpu/profile_kernels.py OUT.txt
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import petfast  # noqa: E402
from petfast import patches  # noqa: E402
from petfast.nnunet.networks import instance_norm_act  # noqa: E402
from test_bench_components import GPU_CASES, base_cases, ccl_cases  # noqa: E402


def report(title, fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    rows.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows) / repeat
    lines = [f"## {title}: {total / 1e3:.3f} ms of kernels and copies per call"]
    lines += [f"  {e.device_time_total / repeat / 1e3:8.3f} ms  x{e.count // repeat:<3d} {e.key[:100]}" for e in rows[:12]]
    return "\n".join(lines)


def main(out):
    cases = ccl_cases(base_cases(full=True))
    parts = []
    for case, conn in GPU_CASES:
        x = torch.from_numpy(cases[case]).cuda()
        parts.append(report(f"label {case} {conn}", lambda: petfast.label(x, conn)))
    x = torch.from_numpy(cases["sparse"]).cuda()
    labels, count = petfast.label(x, 26)
    pet = torch.rand(x.shape, device="cuda") * 10
    parts.append(report("component_stats sparse",
                        lambda: petfast.component_stats(labels, pet, (2.04, 2.04, 3.0), count=count)))
    for conn in (26, 18):  # the block path's and the voxel path's final pass with the statistics
        parts.append(report(f"label_with_stats sparse {conn}",
                            lambda: petfast.label_with_stats(x, pet, (2.04, 2.04, 3.0), conn)))
    # Large components: every run goes to one row of the tables (the warps' carried runs). blobs30's
    # largest has 15.6 M voxels in 479,492 rounds of 128-voxel warps, which each added to its row.
    organs = torch.from_numpy(cases["organs-binary"]).cuda()
    parts.append(report("label_with_stats organs-binary 26",
                        lambda: petfast.label_with_stats(organs, pet, (2.04, 2.04, 3.0), 26)))
    labels, count = petfast.label(torch.from_numpy(cases["blobs30"]).cuda(), 26)
    parts.append(report("component_stats blobs30",
                        lambda: petfast.component_stats(labels, pet, (2.04, 2.04, 3.0), count=count)))
    v = torch.randn(2, 326, 400, 400, device="cuda")
    patch = (128, 128, 128)
    origins = patches.tile_origins(v.shape[1:], patch)[:8]
    tiles = patches.gather_tiles(v, origins, patch)
    g = torch.from_numpy(patches.gaussian_importance_map(patch)).cuda()
    acc, weight = torch.zeros_like(v), torch.zeros(v.shape[1:], device="cuda")
    parts.append(report("gather 8 tiles", lambda: patches.gather_tiles(v, origins, patch)))
    parts.append(report("accumulate 8 tiles", lambda: patches.accumulate_tiles(acc, weight, tiles, origins, g)))
    parts.append(report("finalize", lambda: patches.finalize(acc)))
    del v, tiles, acc, weight
    norm = torch.nn.InstanceNorm3d(32, affine=True).cuda()
    act = torch.nn.LeakyReLU(inplace=True)
    h = torch.randn(8, 32, 128, 128, 128, device="cuda", dtype=torch.float16)
    for name, fmt in (("NCDHW", torch.contiguous_format), ("channels-last", torch.channels_last_3d)):
        y = h.contiguous(memory_format=fmt)
        with torch.inference_mode():
            parts.append(report(f"fused norm + act {name}, 8x32x128^3 fp16", lambda: instance_norm_act(y, norm, 0.01)))
            parts.append(report(f"torch InstanceNorm3d + LeakyReLU {name}", lambda: act(norm(y))))
    text = "\n\n".join(parts)
    Path(out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1])
