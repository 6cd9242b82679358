"""nnU-Net v2 model folders: ``plans.json``, ``dataset.json`` and ``fold_K/checkpoint_final.pth``.

A checkpoint holds nnU-Net's keys (``network_weights``, ``init_args`` with the plans, configuration,
fold and dataset.json, ``trainer_name``, ``inference_allowed_mirroring_axes``, optimizer and
logging state), so nnU-Net's ``nnUNetPredictor`` and ``petfast.Predictor`` both load what petfast
writes. Checkpoints are pickles (nnU-Net stores a ``torch.device`` in them): load only trusted files.
"""
from __future__ import annotations

import io as _io
from pathlib import Path

import torch

from ..data import _write_json
from ..io import atomic_write

CHECKPOINT = "checkpoint_final.pth"


def make_dataset_json(channel_names=None, labels=None, num_training: int = 0, file_ending: str = ".nii.gz") -> dict:
    """nnU-Net's dataset.json; autoPET's channels (CT, PET) and labels (background, tumor) by default."""
    return {"channel_names": dict(channel_names or {"0": "CT", "1": "PET"}),
            "labels": dict(labels or {"background": 0, "tumor": 1}),
            "numTraining": int(num_training), "file_ending": file_ending}


def fold_name(fold) -> str:
    return "fold_all" if str(fold) == "all" else f"fold_{int(fold)}"


def available_folds(model_dir, checkpoint: str = CHECKPOINT) -> list:
    """Folds with the checkpoint, as nnU-Net's ``auto_detect_available_folds`` (``fold_all`` left out)."""
    folds = []
    for d in sorted(Path(model_dir).glob("fold_*")):
        suffix = d.name[len("fold_"):]
        if suffix.isdigit() and (d / checkpoint).is_file():
            folds.append(int(suffix))
    return sorted(folds)


def load_checkpoint(path) -> dict:
    """A checkpoint dict on the CPU; ValueError naming the file when it is unreadable or not nnU-Net's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds for damaged files
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise ValueError(f"{path}: not an nnU-Net checkpoint (no 'network_weights' state dict)")
    return ckpt


def save_checkpoint(path, network_weights: dict, plans: dict, dataset_json: dict, configuration: str, fold,
                    mirror_axes=(0, 1, 2), overwrite: bool = False, **state) -> Path:
    """Write an nnU-Net v2 checkpoint atomically. ``state`` adds or replaces keys (optimizer_state,
    grad_scaler_state, logging, current_epoch, _best_ema, ...)."""
    # Standard (contiguous) layout whatever the network trained in; alias keys (all_modules.*) keep
    # sharing one tensor, so it is stored once.
    standard = {}
    ckpt = {"network_weights": {k: standard.setdefault((v.data_ptr(), v.shape, v.stride()), v.detach().cpu().contiguous())
                                for k, v in network_weights.items()},
            "optimizer_state": None, "grad_scaler_state": None,
            "logging": {k: [] for k in ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses",
                                        "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps")},
            "_best_ema": None, "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset_json,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(mirror_axes) if mirror_axes is not None else None}
    ckpt.update(state)
    buf = _io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()), overwrite)


def write_model_folder(out, plans: dict, dataset_json: dict, fold_weights: dict, configuration: str = "3d_fullres",
                       mirror_axes=(0, 1, 2), overwrite: bool = False) -> Path:
    """A model folder with plans.json, dataset.json and one ``fold_K/checkpoint_final.pth`` per entry
    of ``fold_weights`` ({fold: state_dict}). Returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("plans.json", plans), ("dataset.json", dataset_json)):
        _write_json(out / name, obj, overwrite)
    for fold, weights in fold_weights.items():
        (out / fold_name(fold)).mkdir(exist_ok=True)
        save_checkpoint(out / fold_name(fold) / CHECKPOINT, weights, plans, dataset_json, configuration, fold,
                        mirror_axes, overwrite)
    return out
