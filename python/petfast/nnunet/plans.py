"""nnU-Net v2 plans: configurations with ``inherits_from`` resolved, and network arguments from the
new (``architecture``, nnU-Net >= 2.3) and the old (``UNet_class_name``, 2.0-2.2) formats."""
from __future__ import annotations

import json
from pathlib import Path

_KNOWN = ("PlainConvUNet", "ResidualEncoderUNet")


class Plans:
    """A plans.json. ``Plans(path_or_dict).configuration('3d_fullres')`` gives a resolved dict."""

    def __init__(self, plans):
        if isinstance(plans, (str, Path)):
            path = Path(plans)
            try:
                plans = json.loads(path.read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no plans.json") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
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
