"""The network at inference: petfast's fused instance norm + residual + LeakyReLU against torch's
InstanceNorm3d and LeakyReLU modules, alone and inside whole networks.

- Kernel: float32 activations (2, 32, 48, 80, 80) on the CPU (--full: (2, 32, 64, 128, 128)); on
  the GPU float16 (8, 32, 128, 128, 128), the first stage of a batch of 8 'default'-preset tiles.
- Network: petfast's default model on a batch of 2 of its patches on the CPU (its Predictor's
  setting), channels-last as the Predictor runs it there.
"""
import numpy as np
import pytest

import petfast
from petfast.nnunet import Plans, build_network, networks
from petfast.nnunet.networks import instance_norm_act
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
    record(benchmark.group, "petfast (fused norm)")


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
