"""Does torch.compile pay for the sliding-window network stage on this GPU? The same case and model as
network_ab.py (the 'default' preset, a 326x400x400 case, no mirroring, 8 tiles per forward), eager
against torch.compile's default mode and its CUDA-graph mode ('reduce-overhead'). Reports the first
run (compilation included) and the best of the next two; the JSON is rewritten after each mode, so a
timeout keeps what finished. Issue 6 names compilation and CUDA graphs as options "where they pay".

    python bench/gpu/compile_ab.py OUT.json
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import petfast  # noqa: E402
from _benchdata import cuda_times  # noqa: E402
from test_bench_predict import WHOLE_BODY, _case, _model  # noqa: E402


def main(out):
    model = _model(Path(tempfile.mkdtemp()) / "model", "default")
    data = torch.from_numpy(_case(WHOLE_BODY)).cuda()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "seconds": {}}
    for mode in ("eager", "default", "reduce-overhead"):
        pred = petfast.Predictor.from_nnunet(model, tta=False, device="cuda", batch_size=8)
        if mode != "eager":
            pred.networks = [torch.compile(net, mode=mode, dynamic=False) for net in pred.networks]
        times = cuda_times(pred._sliding_window, data, False)
        results["seconds"][mode] = {"first": round(times[0], 3), "best": round(min(times[1:]), 3)}
        print(mode, [round(t, 3) for t in times], flush=True)
        Path(out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
