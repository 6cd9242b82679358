"""Networks built from real nnU-Net plans equal dynamic_network_architectures' (keys, shapes, outputs)."""
import copy
import json
import pydoc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from petfast.nnunet import Plans, build_network  # noqa: E402

from _testdata import SHARED  # noqa: E402

PLANS = SHARED / "nnunet_plans"
REAL = [("autopet4_task1_baseline_plans.json", 4, 292), ("lesiontracer_resencl_plans.json", 2, 956)]


def reference_network(plans: Plans, conf: str, cin: int, nout: int):
    arch = plans.configuration(conf)["architecture"]
    kw = dict(arch["arch_kwargs"])
    for k in arch["_kw_requires_import"]:
        if kw.get(k):
            kw[k] = pydoc.locate(kw[k])
    return pydoc.locate(arch["network_class_name"])(input_channels=cin, num_classes=nout, deep_supervision=False, **kw)


@pytest.mark.skipif(not PLANS.is_dir(), reason="../shared/data/nnunet_plans not present")
@pytest.mark.parametrize("name,cin,keys", REAL)
def test_real_plans_give_identical_state_dicts(name, cin, keys):
    plans = Plans(PLANS / name)
    ours = build_network(plans, "3d_fullres", cin, 2)
    ref = reference_network(plans, "3d_fullres", cin, 2)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b) and len(a) == keys  # aliased duplicates included, in the same order
    assert all(a[k].shape == b[k].shape for k in a)
    ours.load_state_dict(b, strict=True)


def small_plans(cls_name):
    base = json.loads((PLANS / "autopet4_task1_baseline_plans.json").read_text()) if PLANS.is_dir() else None
    if base is None:
        pytest.skip("../shared/data/nnunet_plans not present")
    plans = copy.deepcopy(base)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = f"dynamic_network_architectures.architectures.unet.{cls_name}"
    kw = arch["arch_kwargs"]
    kw.update(n_stages=4, features_per_stage=[4, 8, 16, 16], kernel_sizes=[[3, 3, 3]] * 4,
              strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]], n_conv_per_stage_decoder=[1, 1, 1])
    if cls_name == "ResidualEncoderUNet":
        kw.pop("n_conv_per_stage", None)
        kw["n_blocks_per_stage"] = [1, 2, 2, 2]
    else:
        kw["n_conv_per_stage"] = [2, 2, 2, 2]
    return Plans(plans)


@pytest.mark.parametrize("cls_name", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_outputs_equal_with_the_same_weights(cls_name):
    plans = small_plans(cls_name)
    torch.manual_seed(0)
    ref = reference_network(plans, "3d_fullres", 2, 3).eval()
    ours = build_network(plans, "3d_fullres", 2, 3).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 2, 16, 24, 32)  # divisible by the strides, as nnU-Net patches are
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)
        # Deep supervision (training): every decoder output, full resolution first, as the reference.
        ref.decoder.deep_supervision = ours.decoder.deep_supervision = True
        outs, refs = ours(x), ref(x)
        assert len(outs) == len(refs) == len(ours.decoder.stages)
        for a, b in zip(outs, refs):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_old_plans_format_builds_the_same_network():
    new = small_plans("PlainConvUNet")
    conf = new.raw["configurations"]["3d_fullres"]
    kw = conf["architecture"]["arch_kwargs"]
    old = copy.deepcopy(new.raw)
    oc = old["configurations"]["3d_fullres"]
    del oc["architecture"]
    oc.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4, unet_max_num_features=16,
              n_conv_per_stage_encoder=kw["n_conv_per_stage"], n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
              conv_kernel_sizes=kw["kernel_sizes"], pool_op_kernel_sizes=kw["strides"])
    a = build_network(new, "3d_fullres", 2, 2).state_dict()
    b = build_network(Plans(old), "3d_fullres", 2, 2).state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)


def test_inheritance_and_errors(tmp_path):
    plans = small_plans("PlainConvUNet")
    raw = copy.deepcopy(plans.raw)
    raw["configurations"]["child"] = {"inherits_from": "3d_fullres", "batch_size": 7}
    p = Plans(raw)
    assert p.configuration("child")["batch_size"] == 7
    assert p.configuration("child")["patch_size"] == p.configuration("3d_fullres")["patch_size"]
    with pytest.raises(ValueError, match="not in the plans"):
        p.configuration("2d_nonexistent")
    raw["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my.lab.FancyNet"
    with pytest.raises(ValueError, match="unknown network architecture"):
        build_network(Plans(raw), "3d_fullres", 2, 2)
    (tmp_path / "plans.json").write_text("{broken")
    with pytest.raises(ValueError, match="JSON"):
        Plans(tmp_path / "plans.json")
    with pytest.raises(FileNotFoundError):
        Plans(tmp_path / "missing.json")
