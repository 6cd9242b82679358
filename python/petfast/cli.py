"""The ``petfast`` command line (also ``python -m petfast``)."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

# Subcommands whose implementation arrives in a later release; listed so that --help shows the plan.
_PLANNED = {
    "predict": "segment lesions in studies with an nnU-Net v2 or petfast model",
    "evaluate": "autoPET metrics (Dice, false positive/negative volume) and lesion tables",
    "train": "train a model on GPU-sampled patches",
}


def _info(args) -> int:
    import petfast
    from petfast import _C

    print(f"petfast {petfast.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"cpu threads: {petfast.get_num_threads()}")
    print(f"cuda kernels built: {'yes' if petfast.cuda_built() else 'no'}")
    n = _C.cuda_device_count()
    print(f"cuda devices seen: {n}")
    if n:
        try:
            import torch

            for d in range(torch.cuda.device_count()):
                print(f"  cuda:{d} {torch.cuda.get_device_name(d)}")
        except Exception:  # names are a nicety; the count above comes from petfast itself
            pass
    return 0


def _demo(args) -> int:
    import petfast

    from . import io, phantom

    device = args.device
    if device == "cuda" and not petfast.cuda_available():
        print("petfast demo: --device cuda needs the CUDA kernels and a GPU; use --device cpu", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else None
    names = ("CT.nii.gz", "CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz")
    if out_dir and not args.overwrite:
        for name in names:
            if (out_dir / name).exists():
                raise FileExistsError(f"{out_dir / name} exists; pass --overwrite to replace it")
    print(f"petfast {petfast.__version__} demo ({device}, {petfast.get_num_threads()} CPU threads)")
    t0 = time.perf_counter()
    st = phantom.make_study(args.tracer, seed=args.seed, scale=args.scale)
    print(f"  synthetic {args.tracer.upper()} study ({phantom.SCANNERS[st.scanner].name} grids, {st.diagnosis.lower()}, "
          f"{len(st.lesions)} lesions) made in {time.perf_counter() - t0:.1f} s")
    print(f"    CT  {st.ct.shape} int16 HU, PET {st.pet.shape} float32 SUV (max {st.pet.max():.1f})")
    x = st.ct
    if device == "cuda":
        import torch

        x = torch.from_numpy(st.ct).cuda()
    ctres = None
    for name, order in (("trilinear", 1), ("cubic, autoPET CTres parity", 3)):
        petfast.resample_ct_to_pet(x, st.ct_affine, st.pet.shape, st.pet_affine, order=order)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = petfast.resample_ct_to_pet(x, st.ct_affine, st.pet.shape, st.pet_affine, order=order)
        if device == "cuda":
            torch.cuda.synchronize()
            res = res.cpu().numpy()
        dt = time.perf_counter() - t0
        print(f"  CT -> PET grid, {name:28s} {dt * 1000:8.1f} ms; "
              f"{np.mean(res == -1024.0):.1%} of the PET grid outside the CT's field of view")
        ctres = res
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for name, data, affine in zip(names, (st.ct, ctres, st.pet, st.label),
                                      (st.ct_affine, st.pet_affine, st.pet_affine, st.pet_affine)):
            io.save(out_dir / name, data, affine, overwrite=args.overwrite)
        print(f"  wrote {', '.join(names)} to {out_dir} in {time.perf_counter() - t0:.1f} s")
    print("Synthetic data, not for clinical use. Inference, lesion metrics and the lesion table join this demo "
          "in later releases.")
    return 0


def _phantom(args) -> int:
    from .data import write_phantom_dataset

    t0 = time.perf_counter()
    out = write_phantom_dataset(args.out, cases=args.cases, tracer=args.tracer, seed=args.seed, scale=args.scale,
                                raw=args.raw, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.cases} synthetic {args.tracer} studies to {out} in {time.perf_counter() - t0:.1f} s "
          f"(nnU-Net layout; check it with: petfast check {out})")
    return 0


def _check(args) -> int:
    from .data import Dataset

    problems = Dataset(args.dataset).check(progress=not args.quiet)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dataset}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: no problems found")
    return 0


def _planned(name):
    def run(args) -> int:
        print(f"petfast {name}: not available in this version yet ({_PLANNED[name]}).", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    import petfast

    p = argparse.ArgumentParser(
        prog="petfast",
        description="Fast whole-body PET/CT lesion segmentation toolkit. "
                    "Run 'petfast COMMAND --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"petfast {petfast.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("info", help="version, CPU threads, CUDA build and devices")
    s.set_defaults(func=_info)
    s = sub.add_parser("demo", help="run the built-in demo on synthetic data (no downloads, no GPU needed)",
                       description="Make a synthetic whole-body PET/CT study (CT on its own grid) and resample "
                                   "the CT onto the PET grid, trilinear and in autoPET's CTres parity mode, "
                                   "with timings.")
    s.add_argument("--out", metavar="DIR", help="write CT.nii.gz, CTres.nii.gz, SUV.nii.gz and SEG.nii.gz here")
    s.add_argument("--tracer", choices=("fdg", "psma"), default="fdg", help="default: fdg")
    s.add_argument("--seed", type=int, default=0, help="the study's random seed (default 0)")
    s.add_argument("--scale", type=float, default=0.5,
                   help="voxels per axis relative to the scanner's grids (default 0.5; 1 = full size)")
    s.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    s.set_defaults(func=_demo)
    s = sub.add_parser("phantom", help="write a synthetic whole-body PET/CT dataset in nnU-Net layout",
                       description="Synthetic FDG/PSMA studies with known lesion masks, in exactly the autoPET "
                                   "nnU-Net layout (imagesTr/<case>_0000 CT on the PET grid, _0001 PET in SUV, "
                                   "labelsTr, dataset.json, splits_final.json, metadata CSVs).")
    s.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    s.add_argument("--cases", type=int, default=10, help="number of studies (default 10)")
    s.add_argument("--tracer", choices=("fdg", "psma", "mixed"), default="mixed", help="default: mixed (alternating)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same dataset")
    s.add_argument("--scale", type=float, default=1.0,
                   help="voxels per axis relative to the scanner's grid (1 = full size; 0.25 = quick, tiny)")
    s.add_argument("--raw", action="store_true", help="also write raw/<patient>/<study>/CT.nii.gz (own grid), SUV, SEG")
    s.add_argument("--overwrite", action="store_true", help="replace files of an existing dataset")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_phantom)
    s = sub.add_parser("check", help="validate a dataset in nnU-Net / autoPET layout",
                       description="One line per problem (missing channels, grid mismatches, labels outside "
                                   "dataset.json's labels, unreadable files, cases missing from the splits); "
                                   "exit code 1 when any.")
    s.add_argument("dataset", metavar="DATASET", help="folder with imagesTr/, labelsTr/, dataset.json")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_check)
    for name, text in _PLANNED.items():
        s = sub.add_parser(name, help=f"(not yet available) {text}")
        s.set_defaults(func=_planned(name))
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, OSError) as e:
        print(f"petfast {args.command}: error: {e}", file=sys.stderr)
        return 1
