"""The network at inference: petfast's fused ops against torch's modules, alone and inside whole
networks.

- Norm kernel (instance norm + residual + LeakyReLU against torch's InstanceNorm3d and LeakyReLU):
  float32 activations (2, 32, 48, 80, 80) on the CPU (--full: (2, 32, 64, 128, 128)); on the GPU
  float16 (8, 32, 128, 128, 128), the first stage of a batch of 8 'default'-preset tiles.
- Decoder upsampling + concatenation (against ConvTranspose3d + torch.cat), CPU, channels-last:
  the last decoder stage of petfast's default model on a batch of 2 patches, 16 -> 8 channels
  upsampled to 48 x 80 x 80 and an 8-channel skip (--full: 32 -> 16 channels to 64 x 128 x 128),
  float32 and bfloat16.
- Network: petfast's default model on a batch of 2 of its patches on the CPU (its Predictor's
  setting), channels-last as the Predictor runs it there.
"""
import numpy as np
import pytest

import petfast
from petfast.nnunet import Plans, build_network, networks
from petfast.nnunet.networks import instance_norm_act, upsample_concat
from petfast.predictor import DEFAULT_MODEL

from _benchdata import synced

torch = pytest.importorskip("torch")
LAYOUTS = {"planar": torch.contiguous_format, "channels-last": torch.channels_last_3d}


def _norm(channels, device="cpu"):
    norm = torch.nn.InstanceNorm3d(channels, eps=1e-5, affine=True).to(device)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


def _torch_modules(norm, act):
    def run(x):
        return act(norm(x))
    return run


@pytest.fixture(scope="module")
def activations(full):
    shape = (2, 32, 64, 128, 128) if full else (2, 32, 48, 80, 80)
    return torch.from_numpy(np.random.default_rng(0).normal(1.0, 2.0, shape).astype(np.float32))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_norm_act_petfast(benchmark, record, activations, layout):
    x = activations.contiguous(memory_format=LAYOUTS[layout])
    norm = _norm(x.shape[1])
    benchmark.group = f"norm-act-cpu-{layout}"
    with torch.inference_mode():
        benchmark(instance_norm_act, x, norm, 0.01)  # in place: the values change, the work does not
    benchmark.extra_info["GB/s"] = 3 * x.numel() * 4 / 1e9 / benchmark.stats.stats.median
    record(benchmark.group, "petfast")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_norm_act_torch(benchmark, record, activations, layout):
    x = activations.contiguous(memory_format=LAYOUTS[layout])
    run = _torch_modules(_norm(x.shape[1]), torch.nn.LeakyReLU(inplace=True))
    benchmark.group = f"norm-act-cpu-{layout}"
    with torch.inference_mode():
        benchmark(run, x)
    record(benchmark.group, "torch InstanceNorm3d + LeakyReLU")


def _decoder_stage(full, dtype):
    cin, cu, spatial = (32, 16, (32, 64, 64)) if full else (16, 8, (24, 40, 40))
    g = torch.Generator().manual_seed(0)
    up = torch.nn.ConvTranspose3d(cin, cu, 2, 2).eval().to(dtype)
    cl = torch.channels_last_3d
    x = torch.randn(2, cin, *spatial, generator=g).to(dtype).contiguous(memory_format=cl)
    skip = torch.randn(2, cu, *[2 * n for n in spatial], generator=g).to(dtype).contiguous(memory_format=cl)
    return up, x, skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cpu_upsample_concat_petfast(benchmark, record, full, dtype):
    up, x, skip = _decoder_stage(full, dtype)
    benchmark.group = f"upsample-concat-cpu-{str(dtype)[6:]}"
    with torch.inference_mode():
        benchmark(upsample_concat, x, up, skip)
    record(benchmark.group, "petfast (matrix product + one pass)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cpu_upsample_concat_torch(benchmark, record, full, dtype):
    up, x, skip = _decoder_stage(full, dtype)
    benchmark.group = f"upsample-concat-cpu-{str(dtype)[6:]}"
    with torch.inference_mode():
        benchmark(lambda: torch.cat((up(x), skip), 1))
    record(benchmark.group, "torch ConvTranspose3d + cat")


@pytest.fixture(scope="module")
def default_network():
    plans = Plans(DEFAULT_MODEL / "plans.json")
    net = build_network(plans, "3d_fullres", 2, 2).eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 2, *plans.configuration("3d_fullres")["patch_size"])
    return net, x.contiguous(memory_format=torch.channels_last_3d)


def test_cpu_network_petfast(benchmark, record, default_network):
    net, x = default_network
    benchmark.group = "network-cpu"
    with torch.inference_mode():
        benchmark(net, x)
    record(benchmark.group, "petfast (fused ops)")


def test_cpu_network_torch(benchmark, record, default_network, monkeypatch):
    net, x = default_network
    monkeypatch.setattr(networks, "FUSED_DEVICES", set())
    benchmark.group = "network-cpu"
    with torch.inference_mode():
        benchmark(net, x)
    record(benchmark.group, "torch modules")


cuda = pytest.mark.skipif(not petfast.cuda_available(), reason="needs the CUDA kernels and a CUDA device")


@pytest.fixture(scope="module")
def gpu_activations():
    return torch.randn(8, 32, 128, 128, 128, device="cuda", dtype=torch.float16)


@cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_norm_act_petfast(benchmark, record, gpu_activations, layout):
    x = gpu_activations.contiguous(memory_format=LAYOUTS[layout])
    norm = _norm(x.shape[1], "cuda")
    benchmark.group = f"norm-act-gpu-{layout}"
    with torch.inference_mode():
        benchmark(synced(instance_norm_act), x, norm, 0.01)
    benchmark.extra_info["GB/s"] = 3 * x.numel() * 2 / 1e9 / benchmark.stats.stats.median
    record(benchmark.group, "petfast")


@cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_norm_act_torch(benchmark, record, gpu_activations, layout):
    x = gpu_activations.contiguous(memory_format=LAYOUTS[layout])
    run = _torch_modules(_norm(x.shape[1], "cuda"), torch.nn.LeakyReLU(inplace=True))
    benchmark.group = f"norm-act-gpu-{layout}"
    with torch.inference_mode():
        benchmark(synced(run), x)
    record(benchmark.group, "torch InstanceNorm3d + LeakyReLU")


@cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_norm_act_copy_floor(benchmark, record, gpu_activations, layout):
    x = gpu_activations
    a = torch.empty(x.numel() * 3 // 2, device="cuda", dtype=x.dtype)  # 3 passes of x, read + write
    b = torch.empty_like(a)
    benchmark.group = f"norm-act-gpu-{layout}"
    benchmark(synced(b.copy_), a)
    record(benchmark.group, "copy of 3 passes (floor)")
