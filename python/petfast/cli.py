"""The ``petfast`` command line (also ``python -m petfast``)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

def _info(args) -> int:
    import petfast
    from petfast import _C, io

    print(f"petfast {petfast.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"cpu threads: {petfast.get_num_threads()}")
    # What sets the speed of reading, writing and CPU inference, for "why is it slow here?"
    read = "libdeflate" if io._deflate else "ISA-L" if io._igzip else "zlib (pip install deflate isal, for faster I/O)"
    print(f"nifti gzip: read {read}, write {'ISA-L' if io._igzip_threaded else 'zlib'}")
    try:
        import torch

        from .predictor import native_bf16_cpu

        bf16 = "bfloat16 (native on this CPU)" if native_bf16_cpu() else "float32 (no native bfloat16 here)"
        print(f"torch {torch.__version__}; CPU inference precision 'auto': {bf16}")
    except ImportError:
        print("torch: not installed (needed by predict, train and demo)")
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


def _demo_dir(out) -> Path:
    """--out as given, or the first of ./petfast-demo, ./petfast-demo-2, ... that does not exist yet."""
    if out:
        return Path(out)
    n = 1
    while Path("petfast-demo" + (f"-{n}" if n > 1 else "")).exists():
        n += 1
    return Path("petfast-demo" + (f"-{n}" if n > 1 else ""))


def _outline(mask2d: np.ndarray) -> np.ndarray:
    inner = mask2d.copy()
    inner[1:] &= mask2d[:-1]
    inner[:-1] &= mask2d[1:]
    inner[:, 1:] &= mask2d[:, :-1]
    inner[:, :-1] &= mask2d[:, 1:]
    return mask2d & ~inner


def mip_png(pet, truth, pred, spacing) -> np.ndarray:
    """Coronal maximum intensity projection of the PET (inverted grey, SUV 0-10), head up, with the
    true lesions outlined in green and the predicted ones in red; square pixels, x2."""
    mip = pet.max(axis=1).T[::-1]  # (k, i), superior at the top
    rows = np.minimum((np.arange(int(round(mip.shape[0] * spacing[2] / spacing[0]))) * spacing[0] / spacing[2]).astype(int),
                      mip.shape[0] - 1)  # square pixels of spacing[0] mm
    grey = (255 * (1 - np.clip(mip / 10.0, 0, 1)))[rows].astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for mask, colour in ((truth, (20, 170, 60)), (pred, (230, 30, 30))):
        edge = _outline((mask != 0).any(axis=1).T[::-1][rows])
        rgb[edge] = colour
    return rgb.repeat(2, 0).repeat(2, 1)


def _demo(args) -> int:
    import petfast

    from . import components, io, metrics, phantom, quant
    from ._png import write_png
    from .data import _write_csv

    import torch  # before any work: without it _run says so

    from .predictor import _default_device

    device = args.device or _default_device().type
    if device == "cuda" and not petfast.cuda_available():
        print("petfast demo: --device cuda needs the CUDA kernels and a GPU; use --device cpu", file=sys.stderr)
        return 2
    out_dir = _demo_dir(args.out)
    names = ("CT.nii.gz", "CTres.nii.gz", "SUV.nii.gz", "SEG.nii.gz", "PRED.nii.gz", "lesions.csv", "mip.png")
    if not args.overwrite:
        clash = [out_dir / n for n in names if (out_dir / n).exists()]
        if clash:
            raise FileExistsError(f"{clash[0]} exists; pass --overwrite to replace the demo's files in {out_dir}")
    t_all = time.perf_counter()
    print(f"petfast {petfast.__version__} demo on {device} ({petfast.get_num_threads()} CPU threads). "
          "Synthetic data and a model trained on synthetic data: not for clinical use.")
    t0 = time.perf_counter()
    st = phantom.make_study(args.tracer, seed=args.seed, scale=0.5)
    print(f"1. synthetic {args.tracer.upper()} study, {phantom.SCANNERS[st.scanner].name} grids, "
          f"{st.diagnosis.lower()}, {len(st.lesions)} lesions: CT {'x'.join(map(str, st.ct.shape))}, "
          f"PET {'x'.join(map(str, st.pet.shape))} ({time.perf_counter() - t0:.1f} s)")
    dev = torch.device(device)
    t0 = time.perf_counter()
    ctres = petfast.resample_ct_to_pet(torch.from_numpy(st.ct).to(dev), st.ct_affine, st.pet.shape, st.pet_affine,
                                       order=3)
    print(f"2. CT resampled onto the PET grid (cubic B-spline, autoPET's CTres rule) in "
          f"{time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    predictor = petfast.Predictor.default(device=device, tta=False)
    pred = predictor.predict([ctres, torch.from_numpy(st.pet).to(dev)], st.pet_affine).cpu().numpy()
    tm = predictor.timings
    print(f"3. lesions segmented in {time.perf_counter() - t0:.1f} s (preprocess {tm['preprocess']:.1f} s, network "
          f"{tm['network']:.1f} s, export {tm['export']:.1f} s; patch {'x'.join(map(str, predictor.patch_size))}, "
          f"{predictor.precision}, no mirroring)")
    t0 = time.perf_counter()
    spacing = tuple(float(s) for s in np.linalg.norm(st.pet_affine[:3, :3], axis=0))
    table = quant.lesions(st.pet, pred, spacing)
    m = metrics.autopet(st.label, pred, float(np.prod(spacing)) / 1000.0)
    true_count = components.label(st.label != 0, 18)[1]
    s = table["study"]
    print(f"4. {s['lesion_count']} lesions found ({true_count} true): MTV {s['mtv_ml']:.1f} ml, TLG {s['tlg']:.1f}, "
          f"SUVmax {s['suv_max']:.1f}; against the known truth: Dice {m['dice']:.3f}, false positive volume "
          f"{m['fp_volume_ml']:.2f} ml, false negative volume {m['fn_volume_ml']:.2f} ml "
          f"({time.perf_counter() - t0:.2f} s)")
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    volumes = {"CT.nii.gz": (st.ct, st.ct_affine), "CTres.nii.gz": (ctres.cpu().numpy(), st.pet_affine),
               "SUV.nii.gz": (st.pet, st.pet_affine), "SEG.nii.gz": (st.label, st.pet_affine),
               "PRED.nii.gz": (pred, st.pet_affine)}
    for name, (data, affine) in volumes.items():
        io.save(out_dir / name, data, affine, overwrite=args.overwrite)
    _write_csv(out_dir / "lesions.csv", table["lesions"], args.overwrite, fields=quant.LESION_COLUMNS)
    write_png(out_dir / "mip.png", mip_png(st.pet, st.label, pred, spacing), overwrite=args.overwrite)
    print(f"5. wrote {', '.join(names)} to {out_dir}/ ({time.perf_counter() - t0:.1f} s); mip.png: PET maximum "
          "intensity projection, true lesions green, predicted red")
    print(f"done in {time.perf_counter() - t_all:.1f} s")
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


def _evaluate(args) -> int:
    import csv
    import io as _io
    import json

    from . import io, metrics, quant
    from .components import _spacing, _stats

    gt_dir, pred_dir = Path(args.gt), Path(args.pred)
    for d in (gt_dir, pred_dir) + ((Path(args.pet),) if args.pet else ()):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such folder")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    gts = sorted(p for p in gt_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not gts:
        raise FileNotFoundError(f"{gt_dir}: no .nii.gz or .nii ground-truth files")
    # Every case's files are found before any is read: a missing one stops the run at once.
    cases = []
    for gt_path in gts:
        case = gt_path.name[: -len(".nii.gz")] if gt_path.name.endswith(".gz") else gt_path.name[: -len(".nii")]
        files = [gt_path, pred_dir / gt_path.name]
        if not files[1].exists():
            raise FileNotFoundError(f"{files[1]}: no prediction for case {case}")
        if args.pet:
            pet_path = next((p for p in (Path(args.pet) / f"{case}_0001.nii.gz", Path(args.pet) / gt_path.name)
                             if p.exists()), None)
            if pet_path is None:
                raise FileNotFoundError(f"{args.pet}: no PET for case {case} ({case}_0001.nii.gz or {gt_path.name})")
            files.append(pet_path)
        cases.append((case, files))
    rows = []
    loaded = zip(cases, io.load_ahead(files for _, files in cases))  # the next case is read during this one
    if not args.quiet:
        from tqdm import tqdm

        loaded = tqdm(loaded, total=len(cases), desc="petfast evaluate", unit="case")
    t0 = time.perf_counter()
    for (case, (gt_path, pred_path, *pet_paths)), pending in loaded:
        gt, pred, *pet = (f.result() for f in pending)
        if gt.data.shape != pred.data.shape or not np.allclose(gt.affine, pred.affine, atol=1e-3):
            raise ValueError(f"{pred_path}: its grid differs from the ground truth's ({gt_path})")
        try:
            masks = metrics._masks(gt.data, pred.data)
            suv = quant._pet(pet[0].data, gt.data.shape) if pet else None
            spacing = _spacing(gt.spacing)
        except ValueError as e:  # name the files: "pred must be a binary mask" alone does not say which
            raise ValueError(f"{gt_path} / {pred_path}{' / ' + str(pet_paths[0]) if pet else ''}: {e}") from None
        voxel_ml = float(np.prod(spacing)) / 1000.0  # from the ground truth's header, as autoPET III
        # Each mask is labelled once, for the metrics and the quantification both.
        labelled = metrics._labelled(*masks)
        row = {"case": case, **metrics._autopet(*labelled, voxel_ml)}
        if pet:
            for who, (labels, count, _) in (("pred", labelled[1]), ("gt", labelled[0])):  # numpy, as the masks
                s = quant._lesions(suv, labels, _stats(labels, count, suv, spacing), spacing)["study"]
                row.update({f"{who}_mtv_ml": s["mtv_ml"], f"{who}_tlg": s["tlg"], f"{who}_suv_max": s["suv_max"],
                            f"{who}_dmax_mm": s["dmax_mm"]})
        rows.append(row)
    summary = metrics.aggregate(rows)
    if out.suffix == ".json":
        text = json.dumps({"cases": rows, "aggregate": summary}, indent=2, allow_nan=True) + "\n"
    else:
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        for stat in ("mean", "median"):
            w.writerow({k: (stat.upper() if k == "case" else summary.get(f"{k}_{stat}", "")) for k in rows[0]})
        text = buf.getvalue()
    io.atomic_write(out, lambda f: f.write(text.encode()), args.overwrite)
    print(f"{len(rows)} cases in {time.perf_counter() - t0:.1f} s -> {out}")
    print(f"  Dice {summary['dice_mean']:.4f} (mean over {summary['dice_n']} cases with lesions), "
          f"FPV {summary['fp_volume_ml_mean']:.2f} ml (mean over {summary['fp_volume_ml_n']}), "
          f"FNV {summary['fn_volume_ml_mean']:.2f} ml (mean over {summary['fn_volume_ml_n']})")
    return 0


def _predict(args) -> int:
    import petfast
    from .predictor import CasesFailed, Predictor

    device = args.device
    if device == "cuda" and not petfast.cuda_available():
        print("petfast predict: --device cuda needs petfast's CUDA kernels and a GPU; use --device cpu", file=sys.stderr)
        return 2
    folds = None if not args.folds else [f if f == "all" else int(f) for f in args.folds]
    t0 = time.perf_counter()
    predictor = Predictor.from_nnunet(args.model, folds=folds, checkpoint=args.checkpoint, device=device,
                                      step=args.step, tta=args.tta, batch_size=args.batch_size,
                                      precision=args.precision)
    # On the CPU a whole-body case takes minutes: a bar over its tiles under the bar over the cases.
    predictor.progress = not args.quiet and predictor.device.type == "cpu"
    print(f"model {args.model}: {predictor.configuration}, {len(predictor.networks)} fold(s), patch "
          f"{'x'.join(map(str, predictor.patch_size))}, TTA {'over axes ' + str(predictor.mirror_axes) if predictor.mirror_axes else 'off'}, "
          f"{predictor.device}, {predictor.precision} (loaded in {time.perf_counter() - t0:.1f} s)")
    total = len(predictor.find_cases(args.input)) if args.resume else 0  # to report the cases --continue skips
    failed = None
    try:
        rows = predictor.predict_files(args.input, args.output, probabilities=args.probabilities,
                                       lesions=args.lesions, overwrite=args.overwrite, skip_existing=args.resume,
                                       progress=not args.quiet)
    except CasesFailed as e:
        rows, failed = e.rows, e
    skipped = total - len(rows) - (len(failed.errors) if failed else 0)
    if skipped > 0 and not (failed and failed.stopped):  # a stopped run did not reach the rest
        print(f"{skipped} case(s) skipped: their outputs exist (--continue)")
    stages = ("read_wait", "preprocess", "network", "export", "total")
    if rows:
        print(f"{'case':32s} {'shape':>13s} " + " ".join(f"{s:>10s}" for s in stages))
    for r in rows:
        print(f"{r['case'][:32]:32s} {r['shape']:>13s} " + " ".join(f"{r[s]:10.2f}" for s in stages))
    wall = time.perf_counter() - t0
    print(f"{len(rows)} case(s) in {wall:.1f} s ({60 * len(rows) / wall:.1f} cases/min including model loading) "
          f"-> {args.output}")
    if failed is not None:
        print(f"petfast predict: error: {failed}", file=sys.stderr)
        if not failed.stopped:
            print("  fix or remove those cases, then run the same command with --continue to predict just them",
                  file=sys.stderr)
        return 1
    return 0


def _train(args) -> int:
    from .train import TrainingOptions, train

    options = TrainingOptions(epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                              val_every=args.val_every, save_every=args.save_every, seed=args.seed,
                              max_val_cases=args.max_val_cases)
    t0 = time.perf_counter()
    out = train(args.dataset, args.fold, args.out, plans=args.plans, preset=args.preset, options=options,
                device=args.device, resume=not args.restart, progress=not args.quiet,
                pretrained_weights=args.pretrained_weights)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        print(f"trained fold {args.fold} in {time.perf_counter() - t0:.0f} s -> {out} "
              f"(use it with: petfast predict -m {out} -f {args.fold} -i INPUT -o OUTPUT)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import petfast

    p = argparse.ArgumentParser(
        prog="petfast",
        description="Fast whole-body PET/CT lesion segmentation toolkit. "
                    "Run 'petfast COMMAND --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"petfast {petfast.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("info", help="version, CPU threads, gzip codecs, torch and CPU precision, CUDA build and devices")
    s.set_defaults(func=_info)
    s = sub.add_parser("demo", help="the whole pipeline on a synthetic study (no downloads, no GPU needed)",
                       description="Make a synthetic whole-body PET/CT study (CT on its own grid, known lesions), "
                                   "resample the CT onto the PET grid, segment the lesions with petfast's default "
                                   "model, find the lesions (18-connected components), score them against the truth "
                                   "(Dice, false positive and false negative volume), and write CT, CTres, SUV, SEG "
                                   "(truth), PRED (prediction) .nii.gz, lesions.csv (MTV, SUVmax, SUVmean, SUVpeak, "
                                   "TLG per lesion) and mip.png. Synthetic data and model: not for clinical use.")
    s.add_argument("--out", metavar="DIR", help="output folder (default: ./petfast-demo, or -2, -3, ... if it exists)")
    s.add_argument("--tracer", choices=("fdg", "psma"), default="fdg", help="default: fdg")
    s.add_argument("--seed", type=int, default=0, help="the study's random seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace the demo's files in an existing --out")
    s.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
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
    s = sub.add_parser("evaluate", help="autoPET metrics (Dice, false positive/negative volume) per case",
                       description="Compare predicted lesion masks with ground truth the way the autoPET "
                                   "challenge does (18-connected components; Dice and FNV are NaN for studies "
                                   "without lesions and skipped in the means; FPV counts everywhere). Files are "
                                   "matched by name; the voxel volume comes from the ground truth's header.")
    s.add_argument("--gt", required=True, metavar="DIR", help="ground-truth masks (<case>.nii.gz, binary: 0 and 1)")
    s.add_argument("--pred", required=True, metavar="DIR", help="predicted masks with the same file names (binary; threshold probability maps first)")
    s.add_argument("--pet", metavar="DIR", help="PET in SUV (<case>_0001.nii.gz or <case>.nii.gz): adds MTV, TLG, "
                                               "SUVmax and Dmax of the predicted and true lesions")
    s.add_argument("--out", required=True, metavar="FILE", help="results.csv (per case + MEAN/MEDIAN rows) or .json")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_evaluate)
    s = sub.add_parser(
        "predict", help="segment lesions with an nnU-Net v2 (or petfast-trained) model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment every case of INPUT with the model folder MODEL_DIR, as nnU-Net's nnUNetv2_predict\n"
                    "does (same preprocessing, tiles, Gaussian weighting, mirroring and fold averaging), on the\n"
                    "GPU when there is one.\n\n"
                    "INPUT is a folder of nnU-Net-style channel files (CASE_0000.nii.gz = CT, CASE_0001.nii.gz =\n"
                    "PET, in dataset.json's channel order), an autoPET study folder (SUV.nii.gz with CTres.nii.gz,\n"
                    "or a raw CT.nii.gz on its own grid, resampled onto the PET grid first), or a folder of such\n"
                    "study folders. OUTPUT gets CASE.nii.gz (uint8 labels on the input grid); with --lesions\n"
                    "CASE_lesions.csv/json (MTV, SUVmax, SUVmean, SUVpeak, TLG per lesion), with --probabilities\n"
                    "CASE_probabilities.nii.gz. Existing files are never replaced without --overwrite; --continue\n"
                    "resumes a run that stopped, skipping the cases already written.\n\n"
                    "A case that cannot be predicted (corrupt file, grids that differ, NaN values, out of memory)\n"
                    "is reported and skipped; the run goes on, lists the failed cases at the end and exits 1\n"
                    "(fix them, then --continue). If the first 3 cases all fail, the run stops there.",
        epilog="example: petfast predict -m nnUNet_results/Dataset221_AutoPETIV/nnUNetTrainer__nnUNetPlans__3d_fullres \\\n"
               "                        -i imagesTs -o predictions --folds 0 1 2 3 4 --lesions csv")
    s.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                   help="nnU-Net v2 model folder (plans.json, dataset.json, fold_K/checkpoint_final.pth)")
    s.add_argument("-i", "--input", required=True, metavar="INPUT", help="input folder (see above)")
    s.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output folder (created)")
    s.add_argument("-f", "--folds", nargs="+", metavar="K",
                   help="folds to average (numbers or 'all'; default: every fold_K with the checkpoint)")
    s.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name (default: %(default)s)")
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="mirroring test-time augmentation over the checkpoint's axes (default: on, as nnU-Net; "
                        "--no-tta is 8x less work)")
    s.add_argument("--step", type=float, default=0.5,
                   help="tile step as a fraction of the patch (default 0.5, nnU-Net's; 1 = no overlap, fastest)")
    s.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    s.add_argument("--precision", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                   help="network precision (default auto: fp16 autocast on CUDA as nnU-Net; on the CPU bf16 where "
                        "it has AMX or AVX512-BF16, else fp32; fp32 is nnU-Net's CPU path)")
    s.add_argument("--batch-size", type=int, default=None,
                   help="network passes per forward call, mirrored copies included (default 8 on CUDA; on "
                        "the CPU about 600k voxels' worth: 2 for the default model, more for small patches)")
    s.add_argument("--lesions", choices=("csv", "json"), help="also write each case's lesion table")
    s.add_argument("--probabilities", action="store_true", help="also write the softmax probabilities")
    replace = s.add_mutually_exclusive_group()
    replace.add_argument("--overwrite", action="store_true", help="replace existing output files")
    replace.add_argument("--continue", dest="resume", action="store_true",
                         help="resume an interrupted run: skip the cases whose outputs all exist (nnU-Net's "
                              "--continue_prediction)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_predict)
    s = sub.add_parser(
        "train", help="train a model (nnU-Net v2 format) on patches sampled on the GPU",
        description="Train one fold of DATASET (nnU-Net layout with splits_final.json, e.g. from 'petfast phantom') "
                    "with nnU-Net's recipe (Dice + cross-entropy with deep supervision, SGD with Nesterov momentum, "
                    "poly learning rate, mirroring/rotation/scaling/intensity augmentation, float16 on CUDA). "
                    "Cases are preprocessed once into OUT/preprocessed (reused by reruns) and held on the device when they "
                    "fit in half its free memory (memory-mapped otherwise); patches are cut and augmented there. "
                    "OUT becomes an nnU-Net v2 model folder that both 'petfast predict' and nnUNetv2_predict load. "
                    "Rerunning the same command resumes from fold_K/checkpoint_latest.pth. Several GPUs: "
                    "torchrun --nproc_per_node N -m petfast train ...")
    s.add_argument("dataset", metavar="DATASET", help="dataset folder (imagesTr, labelsTr, dataset.json, splits_final.json)")
    s.add_argument("--fold", type=int, default=0, help="fold of splits_final.json (default 0)")
    s.add_argument("-o", "--out", required=True, metavar="OUT", help="model folder to write")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--plans", metavar="PLANS_JSON", help="use this nnU-Net plans.json (its 3d_fullres configuration)")
    g.add_argument("--preset", choices=("small", "default", "tiny"), default="small",
                   help="network preset on the dataset's median spacing (default small; default = autoPET IV "
                        "baseline's 30.8 M-parameter network, for GPUs)")
    s.add_argument("--epochs", type=int, default=100, help="default 100 (nnU-Net: 1000)")
    s.add_argument("--iterations", type=int, default=250, help="iterations per epoch (default 250, as nnU-Net)")
    s.add_argument("--batch-size", type=int, default=2, help="patches per iteration and process (default 2)")
    s.add_argument("--lr", type=float, default=1e-2, help="initial learning rate (default 0.01)")
    s.add_argument("--val-every", type=int, default=10, help="validate every N epochs (default 10; 0 = at the end)")
    s.add_argument("--save-every", type=int, default=10, help="write checkpoint_latest.pth every N epochs (default 10)")
    s.add_argument("--max-val-cases", type=int, default=None, help="validate on at most this many cases")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    s.add_argument("--restart", action="store_true", help="ignore an existing checkpoint_latest.pth")
    s.add_argument("--pretrained-weights", metavar="CHECKPOINT", default=None,
                   help="start from this checkpoint's weights (all but the segmentation heads; same network), "
                        "as nnU-Net's -pretrained_weights")
    s.add_argument("--quiet", action="store_true", help="no progress bars or log lines on the terminal")
    s.set_defaults(func=_train)
    return p


def main(argv=None) -> int:
    # torch's OpenMP threads spin for a while after each operator; petfast's kernels, running between
    # torch's, then share the cores with them. Sleeping threads make CPU inference about 20 % faster
    # (demo network 6.5 -> 5.1 s on 2 cores) and leave training unchanged. Must precede torch's import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    # Run as the program (`petfast`, `python -m petfast`), not called from a caller's process, and
    # about to run a network on the CPU: only there does keeping freed memory pay (see below).
    if argv is None and _network_on_cpu(args):
        _keep_freed_memory()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        # Warnings as one line each, above any progress bar (tqdm.write), not as source locations.
        warnings.showwarning = lambda message, *_, **__: _tqdm_write(f"petfast {args.command}: warning: {message}")
        return _run(args)


def _network_on_cpu(args) -> bool:
    if args.command not in ("predict", "train", "demo"):
        return False
    if getattr(args, "device", None):
        return args.device == "cpu"
    try:
        from .predictor import _default_device  # the device these commands pick, torch's view included
    except ImportError:
        return False  # no torch: the command stops with a message
    return _default_device().type == "cpu"


def _keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of returning it to the
    system. By default every block over its mmap threshold (128 kB to 32 MB) is mapped on allocation
    and unmapped on release, so each activation of each network call faults its pages in afresh:
    11,700 page faults and 37 ms of system time per call of the default model on the CPU, a quarter
    of the call. Blocks up to 1 GB now come from the heap, and up to 2 GB of free heap stay with the
    process (which holds its peak memory between cases, as torch's CUDA allocator does on a GPU).
    Only for the command line (main() without argv): a library does not change its host process's
    allocator. Only where a network runs on the CPU: reading NIfTI files, the heap-held blocks cost
    more than they saved (`petfast evaluate` of 5 whole-body studies: 1.7-2.1 s without, 2.7-3.6 s
    with, system time 1.1-1.5 s against 2.2-3.2 s). Skipped where the user set glibc's malloc
    tunables, or on another C library."""
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ) or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    # glibc's documented limit is 32 MB (2.36 takes more); if neither is taken, set nothing: a trim
    # threshold alone would fix the adaptive mmap threshold at 128 kB, worse than the default.
    if not (mallopt(m_mmap_threshold, ctypes.c_int(1 << 30)) or mallopt(m_mmap_threshold, ctypes.c_int(32 << 20))):
        return
    mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1))


def _tqdm_write(line: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, file=sys.stderr)
    else:
        tqdm.write(line, file=sys.stderr)


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        print(f"petfast {args.command}: needs torch, which is not installed (pip install torch; the CPU "
              "build is enough); info, phantom, check and evaluate work without it", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileExistsError, OSError) as e:
        print(f"petfast {args.command}: error: {e}", file=sys.stderr)
        return 1
