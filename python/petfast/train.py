"""Training nnU-Net v2 networks on patches sampled and augmented on the device.

:func:`train` follows nnU-Net's default trainer where it matters for the result:

* Cases are preprocessed once as at inference (crop, normalise, resize to the plans' spacing; the
  :class:`~petfast.Predictor`'s own code) into ``OUT/preprocessed/`` (``CASE.npy`` float32 image,
  ``CASE_seg.npy`` int16 label, ``CASE_locations.npy`` nnU-Net's foreground sample,
  ``CASE_source.txt`` the raw files' sizes and times), which reruns, resumed runs and other folds
  reuse while the plans and the case's raw files are unchanged. When they fit in half of the
  training device's free memory they are kept there, so patches are cut on the device by petfast's
  tile kernel (:class:`~petfast.patches.PatchSampler`: one third of each batch centred on foreground,
  nnU-Net's rule) with no CPU data-loading workers; a cohort too large for that (autoPET is about
  150 GB preprocessed) is memory-mapped from the cache and each batch is cut on the CPU and copied
  over.
* Augmentation on the device, per sample: rotation (U(-30, 30) degrees about each axis, p 0.2) and
  scaling (U(0.7, 1.4), p 0.2) by one ``grid_sample`` (labels nearest), then mirroring, brightness,
  contrast and noise (:func:`~petfast.patches.augment`).
* Loss: cross-entropy + soft Dice (foreground classes, smooth 1e-5; per sample, or over the batch
  when the plans say ``batch_dice``) on every decoder
  output (deep supervision; weights 1/2^i normalised, the coarsest 0), targets downsampled by
  nearest neighbour. Padding (label -1) counts as background, as nnU-Net.
* SGD, Nesterov momentum 0.99, weight decay 3e-5, learning rate 1e-2 x (1 - epoch/epochs)^0.9,
  gradients clipped at norm 12, float16 autocast with a gradient scaler on CUDA.
* Every ``val_every`` epochs the fold's validation cases are segmented whole with the sliding
  window (no mirroring) and scored with :func:`petfast.metrics.autopet` (Dice, false positive and
  false negative volume); the exponential moving average of the Dice (0.9) picks ``checkpoint_best``.
* Output: an nnU-Net v2 model folder (plans.json, dataset.json, ``fold_K/checkpoint_final.pth``,
  ``checkpoint_latest.pth`` every ``save_every`` epochs, ``checkpoint_best.pth``,
  ``training_log.txt``), loadable by ``nnUNetPredictor`` and :class:`~petfast.Predictor`. An
  interrupted run resumes from ``checkpoint_latest.pth`` with the same random state, so it ends
  where an uninterrupted run would.
* Several GPUs (or CPU processes): start it with ``torchrun --nproc_per_node N -m petfast train ...``;
  each process samples its own patches and DistributedDataParallel averages the gradients; rank 0
  validates and writes.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import _arrays, metrics
from .data import Dataset
from .io import atomic_write, write_behind
from .nnunet import preprocess as pre
from .nnunet.model_folder import load_checkpoint, make_dataset_json, save_checkpoint, write_model_folder
from .nnunet.networks import build_network
from .nnunet.plans import AUTOPET_CT_PROPERTIES, AUTOPET_PET_PROPERTIES, Plans, preset_plans
from .patches import PatchSampler, augment, class_locations, finalize


@dataclass
class TrainingOptions:
    """Options of :func:`train` (nnU-Net's defaults are 1000 epochs of 250 iterations)."""

    epochs: int = 100
    iterations: int = 250  # per epoch
    batch_size: int = 2
    lr: float = 1e-2
    weight_decay: float = 3e-5
    val_every: int = 10  # epochs; 0 = only at the end
    save_every: int = 10  # epochs
    seed: int = 0
    max_val_cases: int | None = None

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        rules = (("epochs", self.epochs >= 1, "at least 1"), ("iterations", self.iterations >= 1, "at least 1"),
                 ("batch_size", self.batch_size >= 1, "at least 1"),
                 ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
                 ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "0 or more"),
                 ("val_every", self.val_every >= 0, "0 or more"), ("save_every", self.save_every >= 1, "at least 1"),
                 ("max_val_cases", self.max_val_cases is None or self.max_val_cases >= 0, "None or 0 or more"))
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")


def fingerprint(dataset: Dataset, case_ids, seed: int = 1234) -> tuple[tuple, dict]:
    """Median spacing (z, y, x) and per-channel foreground intensity statistics, as nnU-Net's
    fingerprint (up to 10000 lesion voxels per case; autoPET's values where there are no lesions)."""
    rng = np.random.default_rng(seed)
    spacings, values = [], [[], []]
    for st in dataset.iter_load(case_ids):
        spacings.append(st.spacing[::-1])
        if st.label is not None and np.any(st.label):
            idx = np.flatnonzero(np.asarray(st.label).ravel(order="F"))
            idx = rng.choice(idx, min(len(idx), 10000), replace=False)
            for c, img in enumerate((st.ct, st.pet)):
                values[c].append(np.asarray(img).ravel(order="F")[idx].astype(np.float64))
    props = {}
    for c, default in enumerate((AUTOPET_CT_PROPERTIES, AUTOPET_PET_PROPERTIES)):
        v = np.concatenate(values[c]) if values[c] else None
        props[str(c)] = dict(default) if v is None else {
            "max": float(v.max()), "min": float(v.min()), "mean": float(v.mean()), "median": float(np.median(v)),
            "percentile_00_5": float(np.percentile(v, 0.5)), "percentile_99_5": float(np.percentile(v, 99.5)),
            "std": float(v.std())}
    return tuple(float(s) for s in np.median(np.asarray(spacings), axis=0)), props


def deep_supervision_weights(n: int) -> list[float]:
    w = [1 / 2**i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = False) -> torch.Tensor:
    """nnU-Net's DC_and_CE_loss: cross-entropy + (1 - soft Dice over foreground classes) with smooth
    1e-5, returned as CE - Dice as nnU-Net does (so it can go below 0). The Dice is per sample, or over
    the whole batch with ``batch_dice`` (the plans' ``batch_dice``). Per sample, a patch without
    lesions scores a perfect Dice for an empty prediction, which can pull small-lesion models
    towards predicting nothing; the batch Dice has no such optimum."""
    logits = logits.float()
    t = target[:, 0].long()
    ce = F.cross_entropy(logits, t)
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = torch.stack([t == k for k in range(1, logits.shape[1])], 1).float()
    axes = ((0,) if batch_dice else ()) + tuple(range(2, logits.ndim))
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * inter + 1e-5) / (denom + 1e-5).clamp_min(1e-8)
    return ce - dice.mean()


def deep_supervision_loss(outputs, target: torch.Tensor, batch_dice: bool = False) -> torch.Tensor:
    loss = 0.0
    for w, out in zip(deep_supervision_weights(len(outputs)), outputs):
        if w == 0:  # kept in the graph at no cost, so DistributedDataParallel sees every parameter used
            loss = loss + 0.0 * out.sum()
            continue
        t = target if out.shape[2:] == target.shape[2:] else \
            F.interpolate(target.float(), size=out.shape[2:], mode="nearest-exact").to(target.dtype)
        loss = loss + w * dice_ce_loss(out, t, batch_dice)
    return loss


def spatial_augment(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, p_rotation: float = 0.2,
                    p_scale: float = 0.2, max_angle: float = math.pi / 6, scale=(0.7, 1.4)):
    """Rotation and scaling of each sample about the patch centre in one ``grid_sample`` (trilinear
    for images with 0 outside, nearest for labels), in place on the batch's device."""
    for j in range(images.shape[0]):
        m = np.eye(3)
        if rng.random() < p_rotation:
            for axis, angle in enumerate(rng.uniform(-max_angle, max_angle, 3)):
                c, s = math.cos(angle), math.sin(angle)
                r = np.eye(3)
                a, b = [i for i in range(3) if i != axis]
                r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
                m = r @ m
        if rng.random() < p_scale:
            m = m / rng.uniform(*scale)  # sampling coordinates shrink: the content grows
        if np.allclose(m, np.eye(3)):
            continue
        theta = torch.zeros((1, 3, 4), dtype=torch.float32, device=images.device)
        theta[0, :, :3] = torch.from_numpy(m[::-1, ::-1].copy())  # affine_grid's coordinates are (x, y, z)
        grid = F.affine_grid(theta, (1, 1, *images.shape[2:]), align_corners=False)
        images[j] = F.grid_sample(images[j:j + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        labels[j] = F.grid_sample(labels[j:j + 1].float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)[0].to(labels.dtype)
    return images, labels


class _Log:
    def __init__(self, path: Path | None, quiet: bool):
        self.path, self.quiet = path, quiet

    def __call__(self, msg: str):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {msg}"
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if not self.quiet:
            print(line, flush=True)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _validate(predictor, dataset: Dataset, val_ids) -> dict:
    rows = []
    for st in dataset.iter_load(val_ids):
        mask = predictor.predict([st.ct, st.pet], st.affine)
        rows.append(metrics.autopet(st.label if st.label is not None else np.zeros_like(mask), mask,
                                    float(np.prod(st.spacing)) / 1000.0))
    return metrics.aggregate(rows)


def train(dataset, fold: int, out, plans=None, preset: str = "small", options: TrainingOptions | None = None,
          device=None, resume: bool = True, progress: bool = True, pretrained_weights=None) -> Path:
    """Train fold ``fold`` of ``dataset`` (nnU-Net layout with splits_final.json) into the model
    folder ``out``; returns ``out``. ``plans``: an nnU-Net plans.json (path or dict) to use as is;
    otherwise ``preset`` ('small', 'default', 'tiny') on the training cases' median spacing, with CT
    statistics from their lesion voxels. ``pretrained_weights``: a checkpoint (nnU-Net's or petfast's)
    whose weights start a new run, as nnU-Net's ``-pretrained_weights``: every weight but the
    segmentation heads (``decoder.seg_layers.*``) must match the network in name and shape; a resumed
    run ignores it. See the module notes for the recipe."""
    from .predictor import Predictor, _default_device

    options = options or TrainingOptions()
    options.check()
    dataset = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    out = Path(out)
    if out.resolve() == dataset.root.resolve():  # the model's dataset.json would replace the dataset's
        raise ValueError(f"{out} is the dataset folder; give the model a folder of its own")
    train_ids, val_ids = dataset.fold(fold)
    if not train_ids:
        raise ValueError(f"fold {fold} of {dataset.root} has no training cases")
    if options.max_val_cases is not None:
        val_ids = val_ids[:options.max_val_cases]
    rank, world = _distributed()
    if device is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if _default_device().type == "cuda" \
            else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:  # set_device needs an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    fold_dir = out / f"fold_{fold}"
    latest = fold_dir / "checkpoint_latest.pth"
    dataset_json = make_dataset_json({str(k): v for k, v in dataset.channels.items()}, dataset.meta.get("labels"),
                                     len(dataset.cases), dataset.file_ending)
    if resume and latest.is_file():
        state = load_checkpoint(latest)
        plans = state["init_args"]["plans"]
    else:
        state = None
        if plans is None:
            spacing, props = fingerprint(dataset, train_ids)
            plans = preset_plans(preset, spacing=spacing, channel_names=dataset_json["channel_names"],
                                 intensity_properties=props, dataset_name=dataset.root.name)
        elif not isinstance(plans, dict):
            plans = Plans(plans).raw
    configuration = "3d_fullres" if "3d_fullres" in plans["configurations"] else next(iter(plans["configurations"]))
    n_in, n_out = len(dataset_json["channel_names"]), len(dataset_json["labels"])
    torch.manual_seed(options.seed)
    net = build_network(plans, configuration, n_in, n_out).to(device)
    # The validation Predictor puts the network in its device's faster memory layout (channels-last
    # on the CPU: a training step 0.85 s instead of 1.1 s); the batches follow it.
    predictor = Predictor([net], plans, dataset_json, configuration, mirror_axes=(), device=device, tta=False)
    memory_format = predictor.memory_format
    if state is None and pretrained_weights is not None:  # before anything is written: a bad file leaves nothing
        _load_pretrained(net, pretrained_weights)
    if rank == 0:
        write_model_folder(out, plans, dataset_json, {}, overwrite=True)  # plans.json and dataset.json, atomically
        fold_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(fold_dir / "training_log.txt" if rank == 0 else None, quiet=not progress or rank != 0)

    t0 = time.perf_counter()
    cache = out / "preprocessed"
    done = _preprocess_to_cache(predictor, dataset, train_ids, cache, _plans_key(plans, configuration), rank, world)
    cases, where = _load_cases(cache, train_ids, device)
    if not any(locations for *_, locations in cases):
        warnings.warn(f"no training case of fold {fold} has a foreground voxel (every label is 0): the model can "
                      "only learn to predict background. Are these the right labels?", stacklevel=2)
    mapped = bool(cases) and isinstance(cases[0][0], np.ndarray)  # batches cut on the CPU: prefetched
    log(f"{len(train_ids)} training cases ready in {time.perf_counter() - t0:.1f} s ({done} preprocessed, "
        f"{len(train_ids) - done} from {cache}; {where}); {len(val_ids)} validation cases; {world} process(es)")

    patch = predictor.patch_size
    batch_dice = bool(Plans(plans).configuration(configuration).get("batch_dice", False))
    sampler = PatchSampler(cases, patch, options.batch_size, seed=options.seed * 1000 + rank)
    rng = np.random.default_rng([options.seed, rank])
    opt = torch.optim.SGD(net.parameters(), options.lr, momentum=0.99, nesterov=True, weight_decay=options.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    logging = {"train_losses": [], "lrs": [], "mean_fg_dice": [], "ema_fg_dice": [], "val_fp_volume_ml": [],
               "val_fn_volume_ml": [], "epoch_start_timestamps": [], "epoch_end_timestamps": []}
    start, best_ema = 0, None
    if state is not None:
        net.load_state_dict(state["network_weights"])
        opt.load_state_dict(state["optimizer_state"])
        if scaler is not None and state.get("grad_scaler_state"):
            scaler.load_state_dict(state["grad_scaler_state"])
        logging.update(state["logging"])
        start, best_ema = int(state["current_epoch"]), state.get("_best_ema")
        sampler.rng.bit_generator.state = state["petfast_rng"]["sampler"]
        rng.bit_generator.state = state["petfast_rng"]["augment"]
        torch.set_rng_state(state["petfast_rng"]["torch"])
        log(f"resumed from {latest} at epoch {start}")
    elif pretrained_weights is not None:
        log(f"weights from {pretrained_weights}")
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    net.decoder.deep_supervision = True
    mirror_axes = (0, 1, 2)

    def checkpoint(path, epoch):
        save_checkpoint(path, net.state_dict(), plans, dataset_json, configuration, fold, mirror_axes, overwrite=True,
                        optimizer_state=opt.state_dict(),
                        grad_scaler_state=scaler.state_dict() if scaler is not None else None,
                        logging=logging, current_epoch=epoch, _best_ema=best_ema,
                        petfast_rng={"sampler": sampler.rng.bit_generator.state,
                                     "augment": rng.bit_generator.state, "torch": torch.get_rng_state()},
                        petfast_options=asdict(options))

    for epoch in range(start, options.epochs):
        lr = options.lr * (1 - epoch / options.epochs) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        logging["epoch_start_timestamps"].append(time.time())
        net.train()
        net.decoder.deep_supervision = True
        losses = []
        steps = range(options.iterations)
        if progress and rank == 0:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{options.epochs}", unit="it", leave=False)
        for _, (images, labels) in zip(steps, _epoch_batches(sampler, options.iterations, prefetch=mapped)):
            if isinstance(images, np.ndarray):  # memory-mapped cases: the batch was cut on the CPU
                images = torch.from_numpy(images).to(device, non_blocking=True)
                labels = torch.from_numpy(labels).to(device, non_blocking=True)
            labels.clamp_(min=0)  # padding (-1) is background
            images, labels = spatial_augment(images, labels, rng)
            images, labels = augment(images, labels, rng, mirror_axes)
            images = images.contiguous(memory_format=memory_format)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
                loss = deep_supervision_loss(model(images), labels, batch_dice)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
                opt.step()
            losses.append(float(loss.detach()))
        logging["train_losses"].append(float(np.mean(losses)))
        logging["lrs"].append(lr)
        msg = f"epoch {epoch + 1}/{options.epochs}: train loss {logging['train_losses'][-1]:.4f}, lr {lr:.5f}"
        last = epoch + 1 == options.epochs
        if rank == 0 and val_ids and (last or (options.val_every and (epoch + 1) % options.val_every == 0)):
            net.decoder.deep_supervision = False
            net.eval()
            summary = _validate(predictor, dataset, val_ids)
            dice = summary["dice_mean"] if not math.isnan(summary["dice_mean"]) else 0.0
            ema = dice if not logging["ema_fg_dice"] else 0.9 * logging["ema_fg_dice"][-1] + 0.1 * dice
            logging["mean_fg_dice"].append(dice)
            logging["ema_fg_dice"].append(ema)
            logging["val_fp_volume_ml"].append(summary["fp_volume_ml_mean"])
            logging["val_fn_volume_ml"].append(summary["fn_volume_ml_mean"])
            msg += (f"; validation Dice {dice:.4f} (EMA {ema:.4f}), FPV {summary['fp_volume_ml_mean']:.2f} ml, "
                    f"FNV {summary['fn_volume_ml_mean']:.2f} ml")
            if best_ema is None or ema > best_ema:
                best_ema = ema
                net.decoder.deep_supervision = False
                checkpoint(fold_dir / "checkpoint_best.pth", epoch + 1)
        logging["epoch_end_timestamps"].append(time.time())
        if rank == 0 and (last or (options.save_every and (epoch + 1) % options.save_every == 0)):
            checkpoint(latest, epoch + 1)
        log(msg + f" ({logging['epoch_end_timestamps'][-1] - logging['epoch_start_timestamps'][-1]:.1f} s)")
    net.decoder.deep_supervision = False
    if rank == 0:
        checkpoint(fold_dir / "checkpoint_final.pth", options.epochs)
        log(f"done: {fold_dir / 'checkpoint_final.pth'}")
    if world > 1:
        torch.distributed.barrier()
    return out


def _load_pretrained(net, path) -> None:
    """nnU-Net's load_pretrained_weights: all but the segmentation heads, names and shapes checked."""
    weights = load_checkpoint(path)["network_weights"]
    own = net.state_dict()
    for key, value in own.items():
        if ".seg_layers." in key:
            continue
        if key not in weights:
            raise ValueError(f"pretrained weights {path} lack {key}: another architecture than the plans'")
        if tuple(weights[key].shape) != tuple(value.shape):
            raise ValueError(f"pretrained weights {path}: {key} has shape {tuple(weights[key].shape)}, "
                             f"the network {tuple(value.shape)}")
    own.update({k: v for k, v in weights.items() if k in own and ".seg_layers." not in k})
    net.load_state_dict(own)


def _plans_key(plans: dict, configuration: str) -> str:
    """What the preprocessed cache depends on: the configuration's preprocessing and the intensity statistics."""
    p = Plans(plans)
    relevant = {"configuration": p.configuration(configuration), "transpose_forward": p.raw.get("transpose_forward"),
                "intensity": p.raw.get("foreground_intensity_properties_per_channel")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_files(cache: Path, cid: str) -> tuple[Path, Path, Path]:
    return cache / f"{cid}.npy", cache / f"{cid}_seg.npy", cache / f"{cid}_locations.npy"


def _source_file(cache: Path, cid: str) -> Path:
    return cache / f"{cid}_source.txt"


def _source_stamp(dataset: Dataset, cid: str) -> str:
    """The raw files a cached case was made from (name, size, modification time): an edited or
    replaced case no longer matches, and is preprocessed again."""
    case = dataset.cases[cid]
    files = [f for f in (*case.images, case.label) if f is not None]
    return "\n".join(f"{f.name} {st.st_size} {st.st_mtime_ns}" for f in files for st in [f.stat()])


def _cached(cache: Path, cid: str, stamp: str) -> bool:
    source = _source_file(cache, cid)
    return all(f.is_file() for f in _cache_files(cache, cid)) and source.is_file() and source.read_text() == stamp


def _preprocess_to_cache(predictor, dataset: Dataset, ids, cache: Path, key: str, rank: int, world: int) -> int:
    """Preprocess the cases of ``ids`` missing from ``cache`` (each process a share); returns how many.
    A cache made with other plans is emptied first."""
    stamp = cache / "plans_key.txt"
    if rank == 0:
        cache.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file() or stamp.read_text() != key:
            for f in [*cache.glob("*.npy"), *cache.glob("*_source.txt")]:
                f.unlink()
            atomic_write(stamp, lambda f: f.write(key.encode()), overwrite=True)
    if world > 1:
        torch.distributed.barrier()
    stamps = {cid: _source_stamp(dataset, cid) for cid in ids}
    todo = [cid for cid in ids if not _cached(cache, cid, stamps[cid])]

    def write(cid, arrays):
        try:
            for path, array in zip(_cache_files(cache, cid), arrays):
                atomic_write(path, lambda f, a=array: np.save(f, a), overwrite=True)
            # The source stamp last: a case counts as cached once it is there and matches.
            atomic_write(_source_file(cache, cid), lambda f, t=stamps[cid]: f.write(t.encode()), overwrite=True)
        except OSError as e:
            raise OSError(f"{cid}: its preprocessed arrays could not be written to {cache} ({e}); the cases "
                          "before it are cached, and a rerun goes on from there") from e

    # Each case is written in the background while the next one is read and preprocessed.
    with torch.no_grad(), write_behind() as submit:
        for st in dataset.iter_load(todo[rank::world]):
            cid = st.id
            if st.label is None:
                raise ValueError(f"{cid}: training needs labelsTr/{cid}{dataset.file_ending}")
            image, label = _preprocess_training_case(predictor, st)
            label = label.cpu().numpy()
            locations = class_locations(label)
            rows = [np.concatenate([np.full((len(v), 1), c), v], 1) for c, v in locations.items()]
            rows = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)
            submit(write, cid, (image.cpu().numpy(), label, rows.astype(np.int64)))
    if world > 1:
        torch.distributed.barrier()
    return len(todo)


def _epoch_batches(sampler, n: int, prefetch: bool):
    """The n batches of one epoch. With ``prefetch`` (memory-mapped cases, cut on the CPU) the next
    two are cut in a background thread while the device trains on the current one; never past the
    epoch's last, so the sampler's state at the epoch's end, which checkpoints save, is the same."""
    if not prefetch:
        for _ in range(n):
            yield next(sampler)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # one worker: the batches keep their order
        pending = collections.deque(pool.submit(next, sampler) for _ in range(min(2, n)))
        submitted = len(pending)
        while pending:
            batch = pending.popleft().result()
            if submitted < n:
                pending.append(pool.submit(next, sampler))
                submitted += 1
            yield batch


def _fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` of cases may live on ``device``: at most half of its free memory."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _arrays._available_host_bytes() or 0
    return nbytes <= free // 2


def _load_cases(cache: Path, ids, device: torch.device) -> tuple[list, str]:
    """The cached cases as PatchSampler input: on ``device`` when they fit there, else memory-mapped."""
    files = [_cache_files(cache, cid) for cid in ids]
    nbytes = sum(f.stat().st_size for image, seg, _ in files for f in (image, seg))
    on_device = _fits_on(device, nbytes)
    cases = []
    for image, seg, loc in files:
        rows = np.load(loc)
        locations = {int(c): rows[rows[:, 0] == c, 1:] for c in np.unique(rows[:, 0])}
        if on_device:
            pair = [torch.from_numpy(np.load(f)).to(device) for f in (image, seg)]
        else:
            pair = [np.load(f, mmap_mode="r") for f in (image, seg)]
        cases.append((*pair, locations))
    where = f"{nbytes / 2**30:.2f} GiB " + (f"in memory on {device}" if on_device else "memory-mapped")
    return cases, where


def _preprocess_training_case(predictor, st) -> tuple[torch.Tensor, torch.Tensor]:
    """(image float32 (C, z, y, x), label int16 (z, y, x)) on the predictor's device, as at inference."""
    channels, _, _ = predictor._channels([st.ct, st.pet])
    image, sp, box, _ = predictor._preprocess(channels, st.spacing)
    lab = torch.from_numpy(np.array(st.label)).to(predictor.device)  # a writable copy
    lab = lab.permute(2, 1, 0).permute(*predictor.transpose_forward)[box]
    target = pre.new_shape(image.shape[1:], sp, predictor.spacing)
    if target != tuple(image.shape[1:]):
        axis = pre.separate_axis(sp, predictor.spacing)
        image = pre.resize_image(image, target, axis)
        onehot = torch.stack([lab == k for k in range(predictor.num_classes)]).float()
        # nnU-Net: per-label linear, then the largest (the first on ties, as torch's argmax, whose CPU
        # reduction over the leading axis took 6 s of a whole-body case; finalize's kernel is a pass).
        lab = finalize(pre.resize_logits(onehot, target, axis))
    return image.contiguous(), lab.to(torch.int16).contiguous()
