"""The ``petfast`` command line (also ``python -m petfast``)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
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


def _synthetic_ct(shape, spacing, seed=0) -> np.ndarray:
    """A body-like CT in HU: air, an elliptic body of soft tissue and fat, two lungs, a spine."""
    rng = np.random.default_rng(seed)
    x, y, z = (((np.arange(n) + 0.5) - n / 2) * s for n, s in zip(shape, spacing))
    x, y = x[:, None, None], y[None, :, None]
    ct = np.full(shape, -1000, np.int16)
    body = (x / 180) ** 2 + (y / 120) ** 2 <= 1 + 0 * z[None, None, :]
    ct[body] = 40
    ct[((x / 180) ** 2 + (y / 120) ** 2 > 0.8) & body] = -100  # subcutaneous fat
    thorax = (z > 0)[None, None, :]
    for cx in (-80, 80):
        lung = ((x - cx) / 55) ** 2 + (y / 70) ** 2 <= 1
        ct[lung & thorax] = -850
    ct[((x / 15) ** 2 + ((y + 80) / 15) ** 2 <= 1) & (z > -1e9)[None, None, :]] = 700  # spine
    ct += rng.normal(0, 12, shape).astype(np.int16)
    return ct


def _save_nifti(path: Path, data, affine, overwrite: bool) -> None:
    import nibabel as nib

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    fd, tmp = tempfile.mkstemp(suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(np.asarray(data), affine), tmp)
        os.replace(tmp, path)  # atomic: readers never see a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _demo(args) -> int:
    import petfast

    device = args.device
    if device == "cuda" and not petfast.cuda_available():
        print("petfast demo: --device cuda needs the CUDA kernels and a GPU; use --device cpu", file=sys.stderr)
        return 2
    ct_spacing, pet_spacing = (0.98, 0.98, 1.5), (2.0364, 2.0364, 3.0)
    ct_shape, pet_shape = (512, 512, 300), (256, 256, 150)

    def grid(shape, spacing):
        # LAS, as dicom2nifti writes autoPET's files; both grids centred on the same point.
        a = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
        a[:3, 3] = [(shape[0] - 1) / 2 * spacing[0], -(shape[1] - 1) / 2 * spacing[1], -(shape[2] - 1) / 2 * spacing[2]]
        return a

    ct_affine, pet_affine = grid(ct_shape, ct_spacing), grid(pet_shape, pet_spacing)
    print(f"petfast {petfast.__version__} demo: CT -> PET grid resampling ({device}, "
          f"{petfast.get_num_threads()} CPU threads)")
    t0 = time.perf_counter()
    ct = _synthetic_ct(ct_shape, ct_spacing)
    print(f"  synthetic CT {ct_shape} int16 at {ct_spacing} mm made in {time.perf_counter() - t0:.2f} s")
    x = ct
    if device == "cuda":
        import torch

        x = torch.from_numpy(ct).cuda()
    results = {}
    for name, order in (("trilinear", 1), ("cubic (autoPET CTres parity)", 3)):
        petfast.resample_ct_to_pet(x, ct_affine, pet_shape, pet_affine, order=order)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = petfast.resample_ct_to_pet(x, ct_affine, pet_shape, pet_affine, order=order)
        if device == "cuda":
            torch.cuda.synchronize()
            out = out.cpu().numpy()
        dt = time.perf_counter() - t0
        results[order] = out
        outside = float(np.mean(out == -1024.0))
        print(f"  {name:30s} -> {pet_shape} float32 in {dt * 1000:8.1f} ms; "
              f"{outside:.1%} of the PET grid outside the CT's field of view")
    lung = results[1][128 - 40, 128, 100]
    print(f"  lung HU at a PET voxel: trilinear {lung:.0f}, cubic {results[3][128 - 40, 128, 100]:.0f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _save_nifti(out / "CT.nii.gz", ct, ct_affine, args.overwrite)
        _save_nifti(out / "CTres.nii.gz", results[3], pet_affine, args.overwrite)
        print(f"  wrote {out / 'CT.nii.gz'} and {out / 'CTres.nii.gz'}")
    print("The full pipeline (synthetic study, inference, lesion metrics) joins this demo in later releases.")
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
                       description="Make a synthetic CT on its own grid and resample it onto a PET grid, "
                                   "trilinear and in autoPET's CTres parity mode, with timings.")
    s.add_argument("--out", metavar="DIR", help="write CT.nii.gz and CTres.nii.gz here")
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
