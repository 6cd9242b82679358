"""petfast's inference ops inside nnU-Net networks: the fused instance norm + residual + LeakyReLU
kernel against torch in float64 and CUDA against the CPU twin; the decoder's upsampling +
concatenation against torch's transposed convolution and cat; whole networks with the ops against
the same networks with torch's modules."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from petfast import _C  # noqa: E402
from petfast.nnunet import Plans, build_network, networks  # noqa: E402
from petfast.nnunet.networks import instance_norm_act, upsample_concat  # noqa: E402
from petfast.predictor import DEFAULT_MODEL  # noqa: E402

LAYOUTS = {"planar": torch.contiguous_format, "channels-last": torch.channels_last_3d}
DTYPES = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # about one unit in the last place


def make_norm(channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.InstanceNorm3d(channels, eps=1e-5, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        norm.bias.copy_(torch.rand(channels, generator=g) - 0.5)
    return norm


def reference(x, norm, slope, residual=None):
    y = F.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double(), eps=norm.eps)
    if residual is not None:
        y = y + residual.double()
    return F.leaky_relu(y, slope)


def activations(shape, dtype, layout, rng, mean=3.0, std=2.0):
    x = torch.from_numpy(rng.normal(mean, std, shape).astype(np.float32)).to(dtype)
    return x.contiguous(memory_format=LAYOUTS[layout])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope,with_residual", [(0.01, False), (1.0, True), (0.01, True)])
def test_matches_torch_in_float64(layout, dtype, slope, with_residual, rng):
    # Spatial sizes with odd products, and a plane longer than one flush of the float partial sums.
    for shape in [(2, 5, 3, 7, 9), (1, 3, 16, 16, 17)]:
        x = activations(shape, dtype, layout, rng)
        r = activations(shape, dtype, layout, rng, 0.0, 1.0) if with_residual else None
        norm = make_norm(shape[1])
        ref = reference(x, norm, slope, r)
        inp = x.clone()
        with torch.inference_mode():
            out = instance_norm_act(inp, norm, slope, residual=r)
        assert out.data_ptr() == inp.data_ptr() and out.dtype == dtype  # in place
        assert out.is_contiguous(memory_format=LAYOUTS[layout])
        err = (out.double() - ref).abs().max().item()
        # Within one rounding of the dtype (the kernel rounds once, torch's modules after each op).
        assert err <= DTYPES[dtype] * max(1.0, ref.abs().max().item()), err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_outputs_are_rounded_to_nearest(dtype, rng):
    # The kernel computes in float32 and rounds once: nearly every value is the float64 result rounded
    # by torch, the rest one unit apart (float32 near a rounding boundary). Truncating would miss half.
    x = activations((2, 3, 20, 21, 22), dtype, "planar", rng)
    norm = make_norm(3)
    expected = reference(x, norm, 0.01).to(dtype)
    with torch.inference_mode():
        out = instance_norm_act(x.clone(), norm, 0.01)
    same = (out == expected).double().mean().item()
    # One unit, plus float32's own error where the result nearly cancels to zero.
    unit = expected.double().abs() * (2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7) + 1e-6
    assert same > 0.99 and bool(((out.double() - expected.double()).abs() <= unit).all()), same


def test_large_mean_small_spread_keeps_its_variance(rng):
    # Sums of x and x^2 without a shift would cancel here in float32: mean 1000, std 0.01.
    x = activations((1, 2, 8, 9, 10), torch.float32, "planar", rng, 1000.0, 0.01)
    norm = make_norm(2)
    ref = reference(x, norm, 0.01)
    with torch.inference_mode():
        out = instance_norm_act(x.clone(), norm, 0.01)
    assert (out.double() - ref).abs().max().item() < 2e-3  # x itself is stored to 6e-5 of its spread


def test_constant_planes_give_the_bias():
    x = torch.full((1, 3, 2, 2, 2), 7.0)
    norm = make_norm(3)
    with torch.inference_mode():
        out = instance_norm_act(x, norm, 1.0)
    np.testing.assert_allclose(out.numpy(), norm.bias.detach().numpy()[None, :, None, None, None].repeat(2, 2)
                               .repeat(2, 3).repeat(2, 4), rtol=0, atol=1e-6)


def test_other_layouts_and_residual_layouts(rng):
    norm = make_norm(4)
    x = activations((2, 4, 6, 5, 8), torch.float32, "planar", rng)
    r = activations((2, 4, 6, 5, 8), torch.float32, "channels-last", rng)  # converted to x's layout
    strided = x.transpose(2, 4)  # neither layout: computed on a contiguous copy
    with torch.inference_mode():
        a = instance_norm_act(x.clone(), norm, 0.01, residual=r)
        b = instance_norm_act(strided.clone(), norm, 0.01)
        np.testing.assert_allclose(a.numpy(), reference(x, norm, 0.01, r).numpy(), atol=2e-6)
        np.testing.assert_allclose(b.numpy(), reference(strided, norm, 0.01).numpy(), atol=2e-6)


def view(t):
    n, c = t.shape[:2]
    s = t[0, 0].numel()
    code = networks._CODES[t.dtype]
    return (t.data_ptr(), code, (n, c, s), (c * s, s, 1), -1)


def test_kernel_rejects_bad_arguments():
    x = torch.randn(1, 2, 3, 3, 3)
    w = torch.ones(2)
    vec = (w.data_ptr(), 3, (2,), (1,), -1)
    call = dict(residual=None, gamma=vec, beta=vec, eps=1e-5, slope=0.01, stats=None, stream=0)
    _C.instance_norm_act(view(x), out=view(x), **call)  # the arguments below are each wrong once
    with pytest.raises(ValueError, match="dtype or device"):
        _C.instance_norm_act(view(x), out=view(x.half()), **call)
    with pytest.raises(ValueError, match="shape and layout"):
        _C.instance_norm_act(view(x), out=view(torch.randn(1, 2, 3, 3, 4)), **call)
    with pytest.raises(ValueError, match="float32 \\(C\\)"):
        _C.instance_norm_act(view(x), out=view(x), **{**call, "gamma": (w.data_ptr(), 3, (3,), (1,), -1)})
    with pytest.raises(ValueError, match="planar .* or channels-last"):
        _C.instance_norm_act((x.data_ptr(), 3, (1, 2, 27), (54, 27, 2), -1), out=(x.data_ptr(), 3, (1, 2, 27), (54, 27, 2), -1),
                             **call)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        d = x.double()
        _C.instance_norm_act((d.data_ptr(), 4, (1, 2, 27), (54, 27, 1), -1), out=(d.data_ptr(), 4, (1, 2, 27), (54, 27, 1), -1),
                             **call)
    with pytest.raises(ValueError, match="eps"):
        _C.instance_norm_act(view(x), out=view(x), **{**call, "eps": 0.0})


def decoder_inputs(cin, cu, cs, spatial, factor, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    up = torch.nn.ConvTranspose3d(cin, cu, factor, factor, bias=bias).eval()
    x = torch.randn(2, cin, *spatial, generator=g).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    skip = torch.randn(2, cs, *[n * f for n, f in zip(spatial, factor)], generator=g).to(dtype)
    return up, x, skip.contiguous(memory_format=torch.channels_last_3d)


# Factors of nnU-Net plans ((2, 2, 2), (1, 2, 2)) and odd ones; channel runs of 8-byte words and
# of single elements (3 and 5 channels); with and without bias.
@pytest.mark.parametrize("cin,cu,cs,spatial,factor,bias", [
    (16, 8, 8, (6, 10, 10), (2, 2, 2), True),
    (32, 16, 16, (3, 5, 7), (1, 2, 2), False),
    (8, 3, 5, (2, 3, 4), (2, 1, 3), True),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsample_concat_equals_transposed_conv_and_cat(cin, cu, cs, spatial, factor, bias, dtype):
    up, x, skip = decoder_inputs(cin, cu, cs, spatial, factor, dtype, bias)
    up = up.to(dtype)
    with torch.inference_mode():
        assert networks._concat_fusable(x, up, skip)
        ours, ref = upsample_concat(x, up, skip), torch.cat((up(x), skip), 1)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert ours.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(ours[:, cu:], skip)
    # The same dot products as oneDNN's transposed convolution: equal, or a rounding of the dtype apart.
    np.testing.assert_allclose(ours.double().numpy(), ref.double().numpy(), rtol=0, atol=DTYPES[dtype] * 8)


def test_upsample_concat_under_autocast_matches_the_convolution():
    up, x, skip = decoder_inputs(16, 8, 8, (4, 6, 8), (2, 2, 2), torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = upsample_concat(x, up, skip), torch.cat((up(x), skip), 1)
    assert ours.dtype == ref.dtype == torch.bfloat16
    np.testing.assert_allclose(ours.float().numpy(), ref.float().numpy(), rtol=0, atol=3e-2)


def test_upsample_concat_only_where_it_applies():
    up, x, skip = decoder_inputs(16, 8, 8, (4, 6, 8), (2, 2, 2), torch.float32)
    with torch.inference_mode():
        assert networks._concat_fusable(x, up, skip)
        assert not networks._concat_fusable(x.contiguous(), up, skip)  # planar activations
        assert not networks._concat_fusable(x, up, skip[:, :, :-1].contiguous(memory_format=torch.channels_last_3d))
        overlapping = torch.nn.ConvTranspose3d(16, 8, 3, 2, padding=1, output_padding=1)
        assert not networks._concat_fusable(x, overlapping, skip)
    assert not networks._concat_fusable(x.requires_grad_(), up, skip)  # training: torch's modules


def test_upsample_concat_kernel_rejects_bad_arguments():
    rows, skip = torch.zeros(2 * 2 * 3 * 4, 8 * 4), torch.zeros(2, 4, 4, 6, 8).contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty(2, 8, 4, 6, 8).contiguous(memory_format=torch.channels_last_3d)

    def v(t, code=3):
        return t.data_ptr(), code, tuple(t.shape), t.stride(), -1

    _C.upsample_concat(v(rows), v(skip), v(out), (2, 2, 2))  # each call below gets one thing wrong
    with pytest.raises(ValueError, match="dtype"):
        _C.upsample_concat(v(rows), v(skip, 5), v(out), (2, 2, 2))
    with pytest.raises(ValueError, match="multiple of the factor"):
        _C.upsample_concat(v(rows), v(skip), v(out), (2, 2, 3))
    with pytest.raises(ValueError, match="rows must be contiguous"):
        _C.upsample_concat(v(rows[:, :16]), v(skip), v(out), (2, 2, 2))
    with pytest.raises(ValueError, match="channels-last"):
        _C.upsample_concat(v(rows), v(skip.contiguous()), v(out), (2, 2, 2))
    with pytest.raises(ValueError, match="spatial shape"):
        _C.upsample_concat(v(rows), v(torch.zeros(2, 4, 4, 6, 6)), v(out), (2, 2, 2))
    with pytest.raises(ValueError, match="more channels than the skip"):
        _C.upsample_concat(v(rows), v(out), v(out), (2, 2, 2))


def small_network(cls_name):
    plans = copy.deepcopy(Plans(DEFAULT_MODEL / "plans.json").raw)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = f"dynamic_network_architectures.architectures.unet.{cls_name}"
    kw = arch["arch_kwargs"]
    kw.update(n_stages=3, features_per_stage=[8, 16, 16], kernel_sizes=[[3, 3, 3]] * 3,
              strides=[[1, 1, 1], [2, 2, 2], [1, 2, 2]], n_conv_per_stage_decoder=[1, 1])
    if cls_name == "ResidualEncoderUNet":
        kw.pop("n_conv_per_stage", None)
        kw["n_blocks_per_stage"] = [1, 2, 2]
    else:
        kw["n_conv_per_stage"] = [2, 2, 2]
    torch.manual_seed(0)
    return build_network(Plans(plans), "3d_fullres", 2, 3).eval()


@pytest.fixture
def unfused(monkeypatch):
    def run(net, x):
        with monkeypatch.context() as m:
            m.setattr(networks, "FUSED_DEVICES", set())
            return net(x)
    return run


@pytest.mark.parametrize("cls_name", ["PlainConvUNet", "ResidualEncoderUNet"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_networks_give_torch_modules_outputs(cls_name, layout, unfused, rng):
    net = small_network(cls_name).to(memory_format=LAYOUTS[layout])
    x = activations((2, 2, 8, 16, 12), torch.float32, layout, rng, 0.0, 1.0)
    with torch.inference_mode():
        fused, plain = net(x), unfused(net, x)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-4, atol=1e-4)
    # With gradients (training) torch's modules run and the gradients flow.
    net.train()
    net(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(layout, dtype, rng):
    # (2, 4, 16, 16, 32): planes of 8192 (16-byte loads); (3, 5, 7, 9, 11): odd planes (scalar path).
    for shape in [(2, 4, 16, 16, 32), (3, 5, 7, 9, 11), (1, 40, 4, 6, 8)]:
        x = activations(shape, dtype, layout, rng)
        r = activations(shape, dtype, layout, rng, 0.0, 1.0)
        norm = make_norm(shape[1])
        gpu_x = x.cuda()  # keeps the layout
        with torch.inference_mode():
            cpu = instance_norm_act(x.clone(), norm, 0.01, residual=r)
            gpu = instance_norm_act(gpu_x, copy.deepcopy(norm).cuda(), 0.01, residual=r.cuda())
            torch.cuda.synchronize()
        assert gpu.is_cuda and gpu.data_ptr() == gpu_x.data_ptr()
        assert gpu.is_contiguous(memory_format=LAYOUTS[layout])
        # Float32 sums in a different order: the same value or one rounding of the dtype apart.
        np.testing.assert_allclose(gpu.cpu().double().numpy(), cpu.double().numpy(), rtol=0,
                                   atol=DTYPES[dtype] * max(1.0, cpu.double().abs().max().item()))


@pytest.mark.cuda
def test_cuda_network_fused_matches_torch_modules(unfused, monkeypatch, rng):
    monkeypatch.setattr(networks, "FUSED_DEVICES", {"cpu", "cuda"})
    net = small_network("ResidualEncoderUNet").cuda()
    x = activations((2, 2, 16, 16, 16), torch.float32, "planar", rng, 0.0, 1.0).cuda()
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            fused, plain = net(x), unfused(net, x)
            with torch.autocast("cuda", dtype=torch.float16):
                fused16, plain16 = net(x), unfused(net, x)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    np.testing.assert_allclose(fused.cpu().numpy(), plain.cpu().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused16.float().cpu().numpy(), plain16.float().cpu().numpy(), rtol=0, atol=5e-2)
