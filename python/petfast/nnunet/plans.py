"""nnU-Net v2 plans: configurations with ``inherits_from`` resolved, and network arguments from the
new (``architecture``, nnU-Net >= 2.3) and the old (``UNet_class_name``, 2.0-2.2) formats."""
from __future__ import annotations

from pathlib import Path

from ..io import read_json

_KNOWN = ("PlainConvUNet", "ResidualEncoderUNet")


class Plans:
    """A plans.json. ``Plans(path_or_dict).configuration('3d_fullres')`` gives a resolved dict."""

    def __init__(self, plans):
        if isinstance(plans, (str, Path)):
            plans = read_json(plans)
        if not isinstance(plans, dict) or "configurations" not in plans:
            raise ValueError("plans must be an nnU-Net plans.json with 'configurations'")
        self.raw = plans

    @property
    def configurations(self) -> list[str]:
        return list(self.raw["configurations"])

    def configuration(self, name: str) -> dict:
        """The configuration with its ``inherits_from`` chain applied (child keys win, as nnU-Net)."""
        confs = self.raw["configurations"]
        if name not in confs:
            raise ValueError(f"configuration {name!r} is not in the plans (available: {', '.join(confs)})")
        conf = dict(confs[name])
        seen = {name}
        while "inherits_from" in conf:
            parent = conf.pop("inherits_from")
            if parent in seen or parent not in confs:
                raise ValueError(f"configuration {name!r} inherits from {parent!r}, which is missing or circular")
            seen.add(parent)
            merged = dict(confs[parent])
            merged.update(conf)
            conf = merged
        return conf

    def network_arguments(self, name: str) -> tuple[str, dict]:
        """(class name, keyword arguments) of the configuration's network, either plans format."""
        conf = self.configuration(name)
        if "architecture" in conf:
            arch = conf["architecture"]
            cls = arch["network_class_name"].split(".")[-1]
            kw = dict(arch["arch_kwargs"])
        elif "UNet_class_name" in conf:  # nnU-Net 2.0-2.2
            cls = conf["UNet_class_name"]
            n = len(conf["n_conv_per_stage_encoder"])
            kw = {"n_stages": n,
                  "features_per_stage": [min(conf["UNet_base_num_features"] * 2**i, conf["unet_max_num_features"])
                                         for i in range(n)],
                  "kernel_sizes": conf["conv_kernel_sizes"], "strides": conf["pool_op_kernel_sizes"],
                  "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"], "conv_bias": True,
                  "norm_op_kwargs": {"eps": 1e-5, "affine": True}}
            kw["n_blocks_per_stage" if cls == "ResidualEncoderUNet" else "n_conv_per_stage"] = conf["n_conv_per_stage_encoder"]
        else:
            raise ValueError(f"configuration {name!r} describes no network (neither 'architecture' nor 'UNet_class_name')")
        if cls not in _KNOWN:
            raise ValueError(f"unknown network architecture {cls!r}; petfast builds {' and '.join(_KNOWN)}")
        for key, expected in (("conv_op", "Conv3d"), ("norm_op", "InstanceNorm3d"), ("nonlin", "LeakyReLU")):
            if kw.get(key) and not str(kw[key]).endswith(expected):
                raise ValueError(f"{key} {kw[key]!r} is not supported (petfast builds 3-D {expected} networks)")
            kw.pop(key, None)
        if kw.pop("dropout_op", None):
            raise ValueError("networks with dropout are not supported")
        for key in ("dropout_op_kwargs", "nonlin_kwargs"):
            kw.pop(key, None)
        return cls, kw


# nnU-Net's map from channel name to normalisation (map_channel_name_to_normalization, case-insensitive).
_SCHEME_BY_NAME = {"ct": "CTNormalization", "nonorm": "NoNormalization", "zscore": "ZScoreNormalization",
                   "rescale_to_0_1": "RescaleTo01Normalization", "rgb_to_0_1": "RGBTo01Normalization"}

# Foreground intensity statistics of the autoPET IV nnU-Net baseline plans (Dataset221), channel 0 = CT (HU).
AUTOPET_CT_PROPERTIES = {"max": 3071.0, "min": -1024.0, "mean": 107.77672799269146, "median": 81.0,
                         "percentile_00_5": -831.9483642578125, "percentile_99_5": 1127.5189013671843,
                         "std": 286.1725548247846}
# ... and channel 1 = PET (SUV). Z-scored channels do not use them, but nnU-Net expects an entry per channel.
AUTOPET_PET_PROPERTIES = {"max": 100.0, "min": 0.0, "mean": 7.089671984867433, "median": 4.9,
                          "percentile_00_5": 1.0438873767852783, "percentile_99_5": 51.595245361328125,
                          "std": 8.01080984806995}


def scheme_for(channel_name: str) -> str:
    """The normalisation nnU-Net's planner assigns to a channel name ('CT' -> CTNormalization, ...)."""
    return _SCHEME_BY_NAME.get(channel_name.lower(), "ZScoreNormalization")


def make_plans(patch_size, spacing, features_per_stage, strides, *, architecture: str = "PlainConvUNet",
               n_conv_per_stage=2, n_conv_per_stage_decoder=2, channel_names=None, intensity_properties=None,
               dataset_name: str = "Dataset001_petfast", configuration: str = "3d_fullres", batch_size: int = 2,
               median_shape=None, batch_dice: bool = False) -> dict:
    """A complete nnU-Net v2 plans dict (``architecture`` format) with one 3-D configuration.

    patch_size, spacing (mm) and strides are in nnU-Net's axis order (z, y, x); ``strides`` has one
    entry per stage (the first is normally (1, 1, 1)); kernels are 3x3x3. ``n_conv_per_stage`` is
    per stage (convolutions, or residual blocks for ``ResidualEncoderUNet``). ``channel_names``
    defaults to autoPET's ``{"0": "CT", "1": "PET"}`` and picks each channel's normalisation as
    nnU-Net's planner does; ``intensity_properties`` (per channel index as a string) defaults to the
    autoPET IV CT statistics for CT channels and its PET statistics for the others. Both nnU-Net's predictor and petfast load the result.
    """
    if architecture not in _KNOWN:
        raise ValueError(f"architecture must be one of {_KNOWN}, got {architecture!r}")
    channel_names = dict(channel_names or {"0": "CT", "1": "PET"})
    n = len(features_per_stage)
    if len(strides) != n:
        raise ValueError(f"{len(strides)} strides for {n} stages")
    per_stage = lambda v, k: list(v) if isinstance(v, (list, tuple)) else [int(v)] * k  # noqa: E731
    schemes = [scheme_for(channel_names[str(c)]) for c in range(len(channel_names))]
    props = dict(intensity_properties or {})
    for c, s in enumerate(schemes):
        if str(c) not in props:
            if s == "CTNormalization" and channel_names[str(c)].lower() != "ct":
                raise ValueError(f"channel {c} ({channel_names[str(c)]}) is CT-normalised: give its intensity_properties")
            props[str(c)] = dict(AUTOPET_CT_PROPERTIES if s == "CTNormalization" else AUTOPET_PET_PROPERTIES)
    kw = {"n_stages": n, "features_per_stage": list(features_per_stage),
          "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
          "strides": [list(s) for s in strides],
          ("n_conv_per_stage" if architecture == "PlainConvUNet" else "n_blocks_per_stage"): per_stage(n_conv_per_stage, n),
          "n_conv_per_stage_decoder": per_stage(n_conv_per_stage_decoder, n - 1), "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
          "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}}
    median = [float(s) for s in (median_shape or patch_size)]
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    conf = {"data_identifier": f"nnUNetPlans_{configuration}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": int(batch_size), "patch_size": [int(p) for p in patch_size],
            "median_image_size_in_voxels": median, "spacing": [float(s) for s in spacing],
            "normalization_schemes": schemes, "use_mask_for_norm": [False] * len(schemes), **resampling,
            "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{architecture}",
                             "arch_kwargs": kw, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": bool(batch_dice)}
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [float(s) for s in spacing],
            "original_median_shape_after_transp": [int(s) for s in median],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {configuration: conf}, "experiment_planner_used": "petfast",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": props}


AUTOPET_SPACING = (3.0, 2.0364201068878174, 2.0364201068878174)  # (z, y, x) mm: the FDG (Biograph mCT) PET grid

# Network presets, all on autoPET's spacing. 'default' is the autoPET IV nnU-Net baseline's 3d_fullres
# (PlainConvUNet, 30.8 M parameters); 'small' is a 5-stage network petfast trains on a CPU in minutes;
# 'tiny' is for tests.
PRESETS = {
    "default": dict(patch_size=(112, 160, 128), features_per_stage=[32, 64, 128, 256, 320, 320],
                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]),
    "small": dict(patch_size=(48, 80, 80), features_per_stage=[8, 16, 32, 64, 96],
                  strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),
    "tiny": dict(patch_size=(32, 32, 32), features_per_stage=[4, 8, 16], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
}


def preset_plans(name: str, spacing=AUTOPET_SPACING, **kw) -> dict:
    """:func:`make_plans` for a preset of :data:`PRESETS`; ``kw`` overrides or extends it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return make_plans(spacing=spacing, **{**PRESETS[name], **kw})
