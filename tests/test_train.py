"""petfast.train: loss against nnU-Net's, learning, checkpoints nnU-Net loads, exact resume, DDP on gloo."""
import json
import os
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import petfast  # noqa: E402
from petfast.data import write_phantom_dataset  # noqa: E402
from petfast.nnunet.model_folder import load_checkpoint  # noqa: E402
from petfast.train import TrainingOptions, _Log, deep_supervision_weights, dice_ce_loss, spatial_augment, train  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ds") / "phantoms", cases=5, tracer="fdg", seed=7, scale=0.2)


def quick(**kw):
    return TrainingOptions(**{"epochs": 2, "iterations": 3, "val_every": 0, "save_every": 1, "seed": 3, **kw})


def test_loss_equals_nnunet(rng):
    compound = pytest.importorskip("nnunetv2.training.loss.compound_losses")
    dice = pytest.importorskip("nnunetv2.training.loss.dice")
    ref = compound.DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                  weight_ce=1, weight_dice=1, ignore_label=None,
                                  dice_class=dice.MemoryEfficientSoftDiceLoss)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 6, 7, 8)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 3, (2, 1, 6, 7, 8)))
    torch.testing.assert_close(dice_ce_loss(logits, target), ref(logits, target), rtol=1e-5, atol=1e-6)
    ref_batch = compound.DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                        weight_ce=1, weight_dice=1, ignore_label=None,
                                        dice_class=dice.MemoryEfficientSoftDiceLoss)
    torch.testing.assert_close(dice_ce_loss(logits, target, batch_dice=True), ref_batch(logits, target),
                               rtol=1e-5, atol=1e-6)
    assert deep_supervision_weights(4) == pytest.approx([8 / 14, 4 / 14, 2 / 14, 0.0])


def test_spatial_augment_moves_content_and_keeps_labels_binary(rng):
    img = torch.zeros(1, 1, 24, 24, 24)
    img[0, 0, 8:16, 4:20, 10:14] = 1
    lab = img.clone().to(torch.int16)
    a, b = spatial_augment(img.clone(), lab.clone(), rng, p_rotation=1.0, p_scale=0.0)
    assert set(torch.unique(b).tolist()) <= {0, 1}
    assert not torch.equal(b, lab)  # rotated
    assert abs(int(b.sum()) - int(lab.sum())) < 0.25 * int(lab.sum())  # a rotation keeps the volume
    assert torch.equal(spatial_augment(img.clone(), lab.clone(), rng, 0.0, 0.0)[1], lab)


def test_training_lowers_the_loss_and_writes_a_model_nnunet_loads(dataset, tmp_path):
    out = train(dataset, 0, tmp_path / "model", preset="tiny", options=quick(epochs=4, iterations=8, val_every=4),
                device="cpu", progress=False)
    ckpt = load_checkpoint(out / "fold_0" / "checkpoint_final.pth")
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert len(ckpt["logging"]["mean_fg_dice"]) == 1  # validated once, after the last epoch
    assert (out / "fold_0" / "checkpoint_best.pth").is_file() and (out / "fold_0" / "training_log.txt").is_file()
    assert "validation Dice" in (out / "fold_0" / "training_log.txt").read_text()
    # Trained in channels-last layout on the CPU, saved in the standard layout that every loader expects.
    weights = ckpt["network_weights"]
    assert all(v.is_contiguous() for v in weights.values())
    conv = "encoder.stages.0.0.convs.0."
    assert weights[conv + "conv.weight"].data_ptr() == weights[conv + "all_modules.0.weight"].data_ptr()  # saved once
    # nnU-Net's own predictor loads the folder and agrees with petfast's.
    nnpred = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    p = nnpred.nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                               allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(out), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    ds = petfast.data.Dataset(dataset)
    st = ds.load(ds.fold(0)[1][0])
    img = np.stack([st.ct, st.pet]).astype(np.float32).transpose(0, 3, 2, 1)
    seg = p.predict_single_npy_array(img, {"spacing": list(st.spacing[::-1])}, None, None, False)
    ours = petfast.Predictor.from_nnunet(out, tta=False, device="cpu", precision="fp32").predict([st.ct, st.pet],
                                                                                                  st.affine)
    assert np.mean(seg.transpose(2, 1, 0) == ours) > 0.999


def test_resume_ends_where_an_uninterrupted_run_ends(dataset, tmp_path, monkeypatch):
    straight = load_checkpoint(train(dataset, 0, tmp_path / "a", preset="tiny", options=quick(), device="cpu",
                                     progress=False) / "fold_0" / "checkpoint_final.pth")
    log = _Log.__call__

    def interrupt(self, msg):
        log(self, msg)
        if msg.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    monkeypatch.setattr(_Log, "__call__", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, 0, tmp_path / "b", preset="tiny", options=quick(), device="cpu", progress=False)
    assert not (tmp_path / "b" / "fold_0" / "checkpoint_final.pth").exists()
    assert load_checkpoint(tmp_path / "b" / "fold_0" / "checkpoint_latest.pth")["current_epoch"] == 1
    monkeypatch.setattr(_Log, "__call__", log)
    resumed = load_checkpoint(train(dataset, 0, tmp_path / "b", preset="tiny", options=quick(), device="cpu",
                                    progress=False) / "fold_0" / "checkpoint_final.pth")
    assert "resumed from" in (tmp_path / "b" / "fold_0" / "training_log.txt").read_text()
    assert resumed["logging"]["train_losses"] == straight["logging"]["train_losses"]
    for k, v in straight["network_weights"].items():
        assert torch.equal(v, resumed["network_weights"][k]), k


def test_memory_mapped_cases_train_exactly_as_cases_in_memory(dataset, tmp_path, monkeypatch):
    """A cohort too large for the device is memory-mapped from the cache: same batches, same network."""
    import petfast.train as pt

    in_memory = load_checkpoint(train(dataset, 0, tmp_path / "a", preset="tiny", options=quick(), device="cpu",
                                      progress=False) / "fold_0" / "checkpoint_final.pth")
    monkeypatch.setattr(pt, "_fits_on", lambda device, nbytes: False)
    mapped = load_checkpoint(train(dataset, 0, tmp_path / "b", preset="tiny", options=quick(), device="cpu",
                                   progress=False) / "fold_0" / "checkpoint_final.pth")
    assert "memory-mapped" in (tmp_path / "b" / "fold_0" / "training_log.txt").read_text()
    for k, v in in_memory["network_weights"].items():
        assert torch.equal(v, mapped["network_weights"][k]), k


def test_preprocessed_cache_is_reused_and_rebuilt_when_the_plans_change(dataset, tmp_path):
    import petfast.train as pt

    out = train(dataset, 0, tmp_path / "m", preset="tiny", options=quick(epochs=1), device="cpu", progress=False)
    ids = petfast.data.Dataset(dataset).fold(0)[0]
    cache = out / "preprocessed"
    image, seg, loc = (np.load(f) for f in pt._cache_files(cache, ids[0]))
    assert image.dtype == np.float32 and seg.dtype == np.int16 and image.shape[1:] == seg.shape
    rows = np.load(pt._cache_files(cache, ids[0])[2])
    assert rows.shape[1] == 4 and np.all(seg[tuple(rows[:, 1:].T)] == rows[:, 0])  # (class, z, y, x) rows
    log = out / "fold_0" / "training_log.txt"
    assert f"{len(ids)} preprocessed, 0 from" in log.read_text()
    (out / "fold_0" / "checkpoint_latest.pth").unlink()  # start over: the cache serves the new run
    train(dataset, 0, out, preset="tiny", options=quick(epochs=1), device="cpu", progress=False)
    assert f"0 preprocessed, {len(ids)} from" in log.read_text()
    # An edited raw case (here only its modification time) is preprocessed again, the others not.
    raw = petfast.data.Dataset(dataset).cases[ids[0]].images[1]
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (out / "fold_0" / "checkpoint_latest.pth").unlink()
    train(dataset, 0, out, preset="tiny", options=quick(epochs=1), device="cpu", progress=False)
    assert f"1 preprocessed, {len(ids) - 1} from" in log.read_text()
    (out / "fold_0" / "checkpoint_latest.pth").unlink()
    plans = json.loads((out / "plans.json").read_text())
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0  # other CT normalisation
    train(dataset, 0, out, plans=plans, options=quick(epochs=1), device="cpu", progress=False)
    assert log.read_text().count(f"{len(ids)} preprocessed, 0 from") == 2
    assert not np.array_equal(np.load(pt._cache_files(cache, ids[0])[0]), image)


def test_pretrained_weights_start_a_new_run(dataset, tmp_path):
    import petfast.train as pt

    first = train(dataset, 0, tmp_path / "a", preset="tiny", options=quick(epochs=1), device="cpu", progress=False)
    ckpt = first / "fold_0" / "checkpoint_final.pth"
    weights = load_checkpoint(ckpt)["network_weights"]
    plans = json.loads((first / "plans.json").read_text())
    net = petfast.nnunet.build_network(plans, "3d_fullres", 2, 2)
    pt._load_pretrained(net, ckpt)
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k]) != (".seg_layers." in k), k  # all but the heads, which stay fresh
    other = petfast.nnunet.build_network(petfast.nnunet.plans.preset_plans("small"), "3d_fullres", 2, 2)
    with pytest.raises(ValueError, match="pretrained weights .*(lack|shape)"):
        pt._load_pretrained(other, ckpt)
    second = train(dataset, 0, tmp_path / "b", preset="tiny", options=quick(epochs=1), device="cpu", progress=False,
                   pretrained_weights=ckpt)
    assert f"weights from {ckpt}" in (second / "fold_0" / "training_log.txt").read_text()
    bad_plans = petfast.nnunet.plans.preset_plans("small")  # weights that do not fit: nothing is written
    with pytest.raises(ValueError, match="pretrained weights"):
        train(dataset, 0, tmp_path / "c", plans=bad_plans, options=quick(epochs=1), device="cpu", progress=False,
              pretrained_weights=ckpt)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("field,value", [("epochs", 0), ("iterations", -1), ("batch_size", 0), ("lr", 0.0),
                                         ("lr", float("nan")), ("save_every", 0), ("max_val_cases", -1)])
def test_bad_options_stop_before_anything_is_written(dataset, tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        train(dataset, 0, tmp_path / "m", options=quick(**{field: value}), device="cpu", progress=False)
    assert not (tmp_path / "m").exists()


def test_labels_without_foreground_warn(dataset, tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(dataset, 0, tmp_path / "a", preset="tiny", options=quick(epochs=1, iterations=1), device="cpu",
              progress=False)
    assert not [w for w in seen if "foreground" in str(w.message)]
    empty = shutil.copytree(dataset, tmp_path / "empty")
    for f in (empty / "labelsTr").iterdir():
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), f)
    with pytest.warns(UserWarning, match="no training case of fold 0 has a foreground voxel"):
        train(empty, 0, tmp_path / "b", preset="tiny", options=quick(epochs=1, iterations=1), device="cpu",
              progress=False)


def test_the_dataset_folder_is_not_a_model_folder(dataset):
    before = (dataset / "dataset.json").read_bytes()
    with pytest.raises(ValueError, match="is the dataset folder"):
        train(dataset, 0, dataset / ".", options=quick(epochs=1), device="cpu", progress=False)
    assert (dataset / "dataset.json").read_bytes() == before and not (dataset / "plans.json").exists()


def _ddp_worker(rank, dataset, out, port):
    import petfast.train as pt

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    built = []
    build = pt.build_network
    pt.build_network = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    train(dataset, 0, out, preset="tiny", options=quick(epochs=1, iterations=2), device="cpu", progress=False)
    flat = torch.cat([v.detach().flatten() for v in built[0].parameters()])
    torch.save(flat, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_distributed_training_on_two_cpu_processes(dataset, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(dataset, out, port), nprocs=2, join=True)
    assert "2 process(es)" in (out / "fold_0" / "training_log.txt").read_text()
    final = load_checkpoint(out / "fold_0" / "checkpoint_final.pth")["network_weights"]
    a, b = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(a, b)  # DDP averaged the gradients: both processes hold the same network
    start = petfast.nnunet.build_network(json.loads((out / "plans.json").read_text()), "3d_fullres", 2, 2)
    assert not torch.equal(a, torch.cat([v.flatten() for v in start.parameters()]))  # and it trained
    assert torch.equal(a, torch.cat([final[k].flatten() for k, _ in start.named_parameters()]))


def test_torchrun_cli_trains_with_two_processes(dataset, tmp_path):
    """The documented multi-GPU command, on two CPU processes: one model folder, one summary line."""
    import subprocess
    import sys

    out = tmp_path / "tr"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "petfast",
                          "train", str(dataset), "--fold", "0", "-o", str(out), "--preset", "tiny", "--epochs", "1",
                          "--iterations", "2", "--device", "cpu", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("trained fold 0") == 1
    assert "2 process(es)" in (out / "fold_0" / "training_log.txt").read_text()
    assert load_checkpoint(out / "fold_0" / "checkpoint_final.pth")["current_epoch"] == 1


def test_cli_train_and_resume(dataset, tmp_path, capsys):
    from petfast.cli import main

    args = ["train", str(dataset), "--fold", "0", "-o", str(tmp_path / "m"), "--preset", "tiny", "--epochs", "1",
            "--iterations", "2", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    assert "petfast predict -m" in capsys.readouterr().out
    assert main(args) == 0  # a rerun resumes (nothing left to do) rather than starting over
    assert "resumed from" in (tmp_path / "m" / "fold_0" / "training_log.txt").read_text()
    assert main(["train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")]) == 1


@pytest.mark.cuda
def test_training_on_cuda(dataset, tmp_path):
    """The GPU path: cases on the device, float16 autocast with a gradient scaler, validation there."""
    out = train(dataset, 0, tmp_path / "gpu", preset="tiny", options=quick(epochs=2, iterations=4, val_every=2),
                device="cuda", progress=False)
    ckpt = load_checkpoint(out / "fold_0" / "checkpoint_final.pth")
    assert all(np.isfinite(ckpt["logging"]["train_losses"])) and ckpt["grad_scaler_state"]
    assert len(ckpt["logging"]["mean_fg_dice"]) == 1
    ds = petfast.data.Dataset(dataset)
    st = ds.load(ds.fold(0)[1][0])
    cpu = petfast.Predictor.from_nnunet(out, tta=False, device="cpu", precision="fp32").predict([st.ct, st.pet],
                                                                                                 st.affine)
    gpu = petfast.Predictor.from_nnunet(out, tta=False, device="cuda", precision="fp32").predict(
        [torch.from_numpy(np.asarray(st.ct)).cuda(), torch.from_numpy(np.asarray(st.pet)).cuda()], st.affine)
    assert np.mean(gpu.cpu().numpy() == cpu) > 0.999


def test_prefetched_batches_keep_their_order_and_stop_at_the_epoch_end():
    """Memory-mapped batches are cut ahead in a thread; the sequence and the number drawn (the
    sampler's state at the epoch's end, which checkpoints save) equal the plain loop's."""
    from petfast.train import _epoch_batches

    class Counting:
        def __init__(self):
            self.drawn = 0

        def __next__(self):
            self.drawn += 1
            return self.drawn

    for n in (0, 1, 2, 3, 7):
        plain, ahead = Counting(), Counting()
        assert list(_epoch_batches(plain, n, prefetch=False)) == list(_epoch_batches(ahead, n, prefetch=True))
        assert plain.drawn == ahead.drawn == n
    # An epoch left early (an exception in the step) leaves at most the 2 batches cut ahead unused.
    ahead = Counting()
    batches = _epoch_batches(ahead, 10, prefetch=True)
    assert next(batches) == 1
    batches.close()
    assert ahead.drawn <= 3
