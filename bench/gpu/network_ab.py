"""The sliding-window network stage on the GPU ('default' preset, 30.8 M parameters, a 326x400x400
case, no mirroring, 8 tiles per forward) in both memory layouts, with torch's norm modules and with
petfast's fused instance norm kernel: which the Predictor should use on this GPU
(``Predictor.memory_format``, ``petfast.nnunet.networks.FUSED_DEVICES``). Best of 2 runs after a
warm-up (cuDNN autotuning). Writes JSON to the path given.

    python bench/gpu/network_ab.py OUT.json
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import petfast  # noqa: E402
from petfast.nnunet import networks  # noqa: E402
from _benchdata import cuda_times  # noqa: E402
from test_bench_predict import WHOLE_BODY, _case, _model  # noqa: E402


def main(out):
    model = _model(Path(tempfile.mkdtemp()) / "model", "default")
    data = torch.from_numpy(_case(WHOLE_BODY)).cuda()
    results = {}
    for name, fmt in (("ncdhw", torch.contiguous_format), ("channels_last", torch.channels_last_3d)):
        for norm, devices in (("torch norm", set()), ("fused norm", {"cuda"})):
            networks.FUSED_DEVICES = devices
            pred = petfast.Predictor.from_nnunet(model, tta=False, device="cuda", batch_size=8)
            pred.memory_format = fmt
            pred.networks = [net.to(memory_format=fmt) for net in pred.networks]
            times = cuda_times(pred._sliding_window, data, False)
            results[f"{name}, {norm}"] = min(times[1:])
            print(name, norm, [round(t, 3) for t in times], flush=True)
    Path(out).write_text(json.dumps({"seconds": results, "gpu": torch.cuda.get_device_name()}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
