"""Train petfast's shipped default model on synthetic studies, evaluate it on held-out ones, and export it.

    python scripts/train_default_model.py --work /tmp/petfast-default
    python scripts/train_default_model.py --work /tmp/petfast-default --epochs 220
    python scripts/train_default_model.py --work /tmp/petfast-default --epochs 320 --export
    (the shipped model: 160 cases, 120 epochs, then resumed to 220 and to 320; about 230 min of training on a
    2-core CPU)

Rerunning with a larger --epochs resumes the run with the longer learning-rate schedule;
--pretrained CHECKPOINT starts from other weights (e.g. on a larger --cases set).

1. ``petfast phantom``: --cases synthetic FDG and PSMA studies (seed 2026) at half the scanners'
   resolution (PET 4.07 x 4.07 x 6 mm for FDG), in nnU-Net layout with 5 folds.
2. ``petfast train`` of fold 0 with the 'small' preset on the FDG grid's spacing.
3. Evaluation on --test new studies (other seeds, half FDG, half PSMA, with the demo's settings:
   no mirroring) with autoPET's metrics; written to evaluation.json beside the model.
4. Export to python/petfast/models/default: plans.json, dataset.json, fold_0/checkpoint_final.pth with
   the network weights only (nnU-Net's predictor loads it too).

Synthetic data: the model is a demonstration of the pipeline, not for clinical use.
"""
import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import petfast
from petfast import metrics, phantom
from petfast.data import Dataset, write_phantom_dataset
from petfast.nnunet.model_folder import load_checkpoint, save_checkpoint
from petfast.nnunet.plans import preset_plans
from petfast.train import TrainingOptions, fingerprint, train

EXPORT = Path(__file__).resolve().parents[1] / "python" / "petfast" / "models" / "default"
SCALE = 0.5
SPACING = (3.0 / SCALE, 2.0364201068878174 / SCALE, 2.0364201068878174 / SCALE)  # (z, y, x) of the FDG grid


def evaluate(model_dir, n, seed0=10_000):
    pred = petfast.Predictor.from_nnunet(model_dir, folds=(0,), tta=False)
    rows = []
    for i in range(n):
        tracer = ("fdg", "psma")[i % 2]
        st = phantom.make_study(tracer, seed=seed0 + i, scale=SCALE)
        ctres = petfast.resample_ct_to_pet(st.ct, st.ct_affine, st.pet.shape, st.pet_affine, order=3)
        t0 = time.perf_counter()
        mask = pred.predict([ctres, st.pet], st.pet_affine)
        dt = time.perf_counter() - t0
        voxel_ml = float(np.prod(np.linalg.norm(st.pet_affine[:3, :3], axis=0))) / 1000
        rows.append({"seed": seed0 + i, "tracer": tracer, "lesions": len(st.lesions), "seconds": dt,
                     **metrics.autopet(st.label, mask, voxel_ml)})
        print(rows[-1], flush=True)
    return {"cases": rows, "aggregate": metrics.aggregate(rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for the dataset and the training run")
    ap.add_argument("--cases", type=int, default=160)
    ap.add_argument("--test", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--device", default=None)
    ap.add_argument("--pretrained", default=None, metavar="CHECKPOINT", help="start from these weights")
    ap.add_argument("--export", action="store_true", help="copy the model into the package")
    args = ap.parse_args()
    work = Path(args.work)
    data = work / "dataset"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, cases=args.cases, tracer="mixed", seed=2026, scale=SCALE, progress=True)
    ds = Dataset(data)
    _, props = fingerprint(ds, ds.fold(0)[0])
    # Batch Dice: with per-sample Dice this small-lesion task settles on predicting nothing.
    plans = preset_plans("small", spacing=SPACING, intensity_properties=props, dataset_name="Dataset900_petfast_phantom",
                         batch_dice=True)
    options = TrainingOptions(epochs=args.epochs, iterations=args.iterations, val_every=0, save_every=1,
                              max_val_cases=4)
    train(ds, 0, work / "model", plans=plans, options=options, device=args.device, pretrained_weights=args.pretrained)
    # Training time over every invocation (a rerun with more epochs resumes with the longer schedule).
    log = load_checkpoint(work / "model" / "fold_0" / "checkpoint_final.pth")["logging"]
    seconds = sum(e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"]))
    result = evaluate(work / "model", args.test)
    result["training"] = {"cases": len(ds.fold(0)[0]), "epochs": args.epochs, "iterations": args.iterations,
                          "seconds": seconds, "machine": f"{platform.processor() or platform.machine()}, "
                          f"{petfast.get_num_threads()} threads, torch {torch.__version__}",
                          "date": time.strftime("%Y-%m-%d")}
    (work / "evaluation.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["aggregate"], indent=2))
    if args.export:
        shutil.rmtree(EXPORT, ignore_errors=True)
        (EXPORT / "fold_0").mkdir(parents=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copy(work / "model" / name, EXPORT / name)
        ck = load_checkpoint(work / "model" / "fold_0" / "checkpoint_final.pth")
        save_checkpoint(EXPORT / "fold_0" / "checkpoint_final.pth", ck["network_weights"], ck["init_args"]["plans"],
                        ck["init_args"]["dataset_json"], ck["init_args"]["configuration"], 0,
                        ck["inference_allowed_mirroring_axes"], current_epoch=ck["current_epoch"])
        (EXPORT / "evaluation.json").write_text(json.dumps(result, indent=2))
        print(f"exported to {EXPORT}")


if __name__ == "__main__":
    main()
