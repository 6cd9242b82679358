"""PlainConvUNet and ResidualEncoderUNet with dynamic_network_architectures' exact module tree, so
that nnU-Net checkpoints (aliased keys included) load with ``load_state_dict(strict=True)``.

Conventions (dynamic_network_architectures 0.4.4): conv -> InstanceNorm3d(eps 1e-5, affine) ->
LeakyReLU(0.01); downsampling by the stride of each stage's first conv; transposed convs up; skip
concatenated after the upsampled features; one 1x1x1 segmentation head per decoder stage, of which
only the last (full resolution) is used at inference (no deep supervision). The aliases are part of
the tree on purpose: ``all_modules`` re-registers each block's conv/norm/nonlin, and the decoder
holds the encoder.

At inference (activations that need no gradient, on the devices in ``FUSED_DEVICES``) each
InstanceNorm runs fused with the residual sum and LeakyReLU after it, in place, by petfast's
``instance_norm_act`` kernel: two passes over the activations instead of four or five; and on the
CPU, with channels-last activations, each decoder stage's transposed convolution and concatenation
with the skip are one matrix product and one pass (``upsample_concat``). Training runs torch's
modules.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _C

# Devices whose inference runs petfast's fused ops (upsample_concat: the CPU only). CUDA joins once
# bench/gpu/network_ab.py has measured the fused norm against torch's modules on hardware (its
# kernel is tested against the CPU twin there); the benchmarks and tests set this to compare the two.
FUSED_DEVICES = {"cpu"}
_CODES = {torch.float32: 3, torch.float16: 5, torch.bfloat16: 6}  # csrc/petfast/array.h DType


def _fusable(x: torch.Tensor, norm: nn.Module) -> bool:
    return (x.device.type in FUSED_DEVICES and not x.requires_grad and x.dtype in _CODES and x.dim() == 5
            and isinstance(norm, nn.InstanceNorm3d) and norm.affine and not norm.track_running_stats
            and (x.device.type == "cpu" or _C.cuda_built()))


def instance_norm_act(x: torch.Tensor, norm: nn.InstanceNorm3d, slope: float = 1.0,
                      residual: torch.Tensor | None = None) -> torch.Tensor:
    """``leaky_relu(norm(x) + residual, slope)`` for inference (slope 1: no activation), written
    over ``x`` when it is contiguous or channels-last (else over a contiguous copy) and returned;
    x (N, C, D, H, W) float32, float16 or bfloat16, the residual converted to x's dtype and layout.
    Statistics in float64 (torch: float32), so results agree with torch's modules to the rounding of
    x's dtype. The weight and bias tensors below stay referenced until the kernel returns."""
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
    if not (x.is_contiguous() or channels_last):
        x = x.contiguous()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    n, c, s = x.shape[0], x.shape[1], x[0, 0].numel()
    strides = (s * c, 1, c) if channels_last else (c * s, s, 1)
    device = -1 if x.device.type == "cpu" else x.device.index
    code = _CODES[x.dtype]

    def view(t):
        return (t.data_ptr(), code, (n, c, s), strides, device)

    def vector(t):
        t = t.detach().float().contiguous()
        return t, (t.data_ptr(), 3, (c,), (1,), device)

    if residual is not None:
        residual = residual.to(x.dtype).contiguous(memory_format=fmt)
    (weight, w), (bias, b) = vector(norm.weight), vector(norm.bias)  # weight, bias: alive while the op reads them
    stats = stream = None
    if device >= 0:
        stats = torch.empty(4 * n * c, dtype=torch.float64, device=x.device)
        stats_view = (stats.data_ptr(), 4, (4 * n * c,), (1,), device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
    _C.instance_norm_act(view(x), None if residual is None else view(residual), w, b, view(x), float(norm.eps),
                         float(slope), None if stats is None else stats_view, stream or 0)
    return x


def _channels_last(t: torch.Tensor) -> bool:
    """Dense channels-last strides, size-1 axes included (torch's check lets those be anything)."""
    n, c, d, h, w = t.shape
    return t.stride() == (d * h * w * c, 1, h * w * c, w * c, c)


def _concat_fusable(x: torch.Tensor, up: nn.ConvTranspose3d, skip: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and "cpu" in FUSED_DEVICES and not x.requires_grad and x.dim() == 5
            and x.dtype in _CODES and skip.dtype in _CODES and _channels_last(x) and _channels_last(skip)
            and tuple(up.kernel_size) == tuple(up.stride) and not any(up.padding) and not any(up.output_padding)
            and tuple(up.dilation) == (1, 1, 1) and up.groups == 1
            and skip.shape[2:] == tuple(s * f for s, f in zip(x.shape[2:], up.stride)) and skip.shape[0] == x.shape[0])


def upsample_concat(x: torch.Tensor, up: nn.ConvTranspose3d, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat((up(x), skip), 1)`` for channels-last inference on the CPU, where ``up`` is the
    decoder's transposed convolution (kernel == stride, as in every nnU-Net plan). Each input voxel
    maps to its own block of output voxels, so ``up`` is one matrix product (with the bias; under
    autocast in its dtype, as the convolution would be), and petfast's ``upsample_concat`` op writes
    its rows and the skip into the concatenated channels-last output in one pass."""
    n, cin = x.shape[:2]
    cu, factor = up.out_channels, tuple(up.stride)
    volume = factor[0] * factor[1] * factor[2]
    weight = up.weight.permute(0, 2, 3, 4, 1).reshape(cin, volume * cu)  # (cin, a, b, c, cu)
    rows = x.permute(0, 2, 3, 4, 1).reshape(-1, cin)  # a view of channels-last x
    rows = torch.mm(rows, weight) if up.bias is None else torch.addmm(up.bias.repeat(volume), rows, weight)
    dtype = torch.promote_types(rows.dtype, skip.dtype)
    rows, skip = rows.to(dtype).contiguous(), skip.to(dtype)
    out = torch.empty((n, cu + skip.shape[1], *skip.shape[2:]), dtype=dtype, memory_format=torch.channels_last_3d)

    def view(t):
        return t.data_ptr(), _CODES[dtype], tuple(t.shape), t.stride(), -1

    _C.upsample_concat(view(rows), view(skip), view(out), factor)
    return out


class ConvNormReLU(nn.Module):
    """conv -> norm -> LeakyReLU (``ConvDropoutNormReLU`` without dropout); nonlin optional."""

    def __init__(self, cin, cout, kernel, stride, bias, norm_kwargs, nonlin=True):
        super().__init__()
        pad = [(k - 1) // 2 for k in kernel]
        self.conv = nn.Conv3d(cin, cout, kernel, stride, pad, bias=bias)
        self.norm = nn.InstanceNorm3d(cout, **norm_kwargs)
        mods = [self.conv, self.norm]
        if nonlin:
            self.nonlin = nn.LeakyReLU(inplace=True)
            mods.append(self.nonlin)
        self.all_modules = nn.Sequential(*mods)

    def forward(self, x):
        x = self.conv(x)
        if _fusable(x, self.norm):
            return instance_norm_act(x, self.norm, self.nonlin.negative_slope if hasattr(self, "nonlin") else 1.0)
        x = self.norm(x)
        return self.nonlin(x) if hasattr(self, "nonlin") else x


class StackedConvBlocks(nn.Module):
    def __init__(self, n, cin, cout, kernel, stride, bias, norm_kwargs):
        super().__init__()
        self.convs = nn.Sequential(ConvNormReLU(cin, cout, kernel, stride, bias, norm_kwargs),
                                   *[ConvNormReLU(cout, cout, kernel, 1, bias, norm_kwargs) for _ in range(n - 1)])

    def forward(self, x):
        return self.convs(x)


class PlainConvEncoder(nn.Module):
    def __init__(self, cin, features, kernels, strides, n_convs, bias, norm_kwargs):
        super().__init__()
        stages = []
        for f, k, s, n in zip(features, kernels, strides, n_convs):
            stages.append(nn.Sequential(StackedConvBlocks(n, cin, f, k, s, bias, norm_kwargs)))
            cin = f
        self.stages = nn.Sequential(*stages)
        self.output_channels, self.strides, self.kernel_sizes = list(features), strides, kernels

    def forward(self, x):
        skips = []
        for s in self.stages:
            x = s(x)
            skips.append(x)
        return skips


class BasicBlockD(nn.Module):
    """Residual block: conv-norm-relu, conv-norm, plus a skip (avg-pool and/or 1x1 conv-norm), relu."""

    def __init__(self, cin, cout, kernel, stride, bias, norm_kwargs):
        super().__init__()
        self.conv1 = ConvNormReLU(cin, cout, kernel, stride, bias, norm_kwargs)
        self.conv2 = ConvNormReLU(cout, cout, kernel, 1, bias, norm_kwargs, nonlin=False)
        self.nonlin2 = nn.LeakyReLU(inplace=True)
        has_stride = any(s != 1 for s in stride) if isinstance(stride, (list, tuple)) else stride != 1
        skip = []
        if has_stride:
            skip.append(nn.AvgPool3d(stride, stride))
        if cin != cout:
            skip.append(ConvNormReLU(cin, cout, [1, 1, 1], 1, False, norm_kwargs, nonlin=False))
        self.skip = nn.Sequential(*skip) if skip else (lambda x: x)

    def forward(self, x):
        h = self.conv2.conv(self.conv1(x))
        if _fusable(h, self.conv2.norm):
            return instance_norm_act(h, self.conv2.norm, self.nonlin2.negative_slope, residual=self.skip(x))
        return self.nonlin2(self.conv2.norm(h) + self.skip(x))


class StackedResidualBlocks(nn.Module):
    def __init__(self, n, cin, cout, kernel, stride, bias, norm_kwargs):
        super().__init__()
        self.blocks = nn.Sequential(BasicBlockD(cin, cout, kernel, stride, bias, norm_kwargs),
                                    *[BasicBlockD(cout, cout, kernel, 1, bias, norm_kwargs) for _ in range(n - 1)])

    def forward(self, x):
        return self.blocks(x)


class ResidualEncoder(nn.Module):
    def __init__(self, cin, features, kernels, strides, n_blocks, bias, norm_kwargs):
        super().__init__()
        self.stem = StackedConvBlocks(1, cin, features[0], kernels[0], 1, bias, norm_kwargs)
        cin = features[0]
        stages = []
        for f, k, s, n in zip(features, kernels, strides, n_blocks):
            stages.append(StackedResidualBlocks(n, cin, f, k, s, bias, norm_kwargs))
            cin = f
        self.stages = nn.Sequential(*stages)
        self.output_channels, self.strides, self.kernel_sizes = list(features), strides, kernels

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for s in self.stages:
            x = s(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    def __init__(self, encoder, num_classes, n_convs, bias, norm_kwargs):
        super().__init__()
        self.encoder = encoder  # registered again, as in dynamic_network_architectures (aliased keys)
        f, st, ks = encoder.output_channels, encoder.strides, encoder.kernel_sizes
        n = len(f)
        transp, stages, heads = [], [], []
        for s in range(1, n):
            below, skip = f[-s], f[-(s + 1)]
            transp.append(nn.ConvTranspose3d(below, skip, st[-s], st[-s], bias=bias))
            stages.append(StackedConvBlocks(n_convs[s - 1], 2 * skip, skip, ks[-(s + 1)], 1, bias, norm_kwargs))
            heads.append(nn.Conv3d(skip, num_classes, 1, 1, 0, bias=True))
        # Registration order as dynamic_network_architectures, so state dicts list keys identically.
        self.stages, self.transpconvs, self.seg_layers = nn.ModuleList(stages), nn.ModuleList(transp), nn.ModuleList(heads)
        self.deep_supervision = False

    def forward(self, skips):
        """Full-resolution logits; with ``deep_supervision`` the logits of every decoder stage, the
        full resolution first (as dynamic_network_architectures)."""
        x = skips[-1]
        outputs = []
        for s in range(len(self.stages)):
            up, skip = self.transpconvs[s], skips[-(s + 2)]
            x = self.stages[s](upsample_concat(x, up, skip) if _concat_fusable(x, up, skip)
                               else torch.cat((up(x), skip), 1))
            if self.deep_supervision:
                outputs.append(self.seg_layers[s](x))
        return outputs[::-1] if self.deep_supervision else self.seg_layers[-1](x)


class _UNet(nn.Module):
    def forward(self, x):
        return self.decoder(self.encoder(x))


class PlainConvUNet(_UNet):
    def __init__(self, input_channels, n_stages, features_per_stage, kernel_sizes, strides, n_conv_per_stage,
                 num_classes, n_conv_per_stage_decoder, conv_bias=True, norm_op_kwargs=None, **_ignored):
        super().__init__()
        norm = dict(norm_op_kwargs or {"eps": 1e-5, "affine": True})
        self.encoder = PlainConvEncoder(input_channels, features_per_stage[:n_stages], kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, conv_bias, norm)


class ResidualEncoderUNet(_UNet):
    def __init__(self, input_channels, n_stages, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
                 num_classes, n_conv_per_stage_decoder, conv_bias=True, norm_op_kwargs=None, **_ignored):
        super().__init__()
        norm = dict(norm_op_kwargs or {"eps": 1e-5, "affine": True})
        self.encoder = ResidualEncoder(input_channels, features_per_stage[:n_stages], kernel_sizes, strides,
                                       n_blocks_per_stage, conv_bias, norm)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, conv_bias, norm)


def build_network(plans, configuration: str, input_channels: int, num_classes: int) -> nn.Module:
    """The configuration's network (without deep supervision), ready for an nnU-Net state dict."""
    from .plans import Plans

    cls, kw = (plans if isinstance(plans, Plans) else Plans(plans)).network_arguments(configuration)
    net = {"PlainConvUNet": PlainConvUNet, "ResidualEncoderUNet": ResidualEncoderUNet}[cls]
    kw.pop("deep_supervision", None)
    return net(input_channels=input_channels, num_classes=num_classes, **kw)
