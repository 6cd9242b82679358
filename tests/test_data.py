"""Dataset layout: phantom datasets as nnU-Net writes them, `petfast check`, raw study folders."""
import json
import shutil

import numpy as np
import pytest

from petfast import data, io
from petfast.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "Dataset900_petfast"
    data.write_phantom_dataset(root, cases=6, tracer="mixed", seed=7, scale=0.2, raw=True)
    return root


def test_layout(dataset):
    ds = data.Dataset(dataset)
    assert len(ds) == 6
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT", "1": "PET"} and meta["numTraining"] == 6
    for case in ds.cases.values():
        assert case.tracer in ("fdg", "psma") and len(case.patient) == 10 and "Ganzkoerper" in case.study
        assert all(p.exists() for p in case.images) and case.label.exists()
    assert {c.tracer for c in ds.cases.values()} == {"fdg", "psma"}
    train, val = ds.fold(0)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ds.cases)
    assert sorted(sum((ds.fold(k)[1] for k in range(5)), [])) == sorted(ds.cases)  # every case validated once
    rows = ds.metadata("fdg") + ds.metadata("psma")
    assert sorted(r["case_id"] for r in rows) == sorted(ds.cases)


def test_case_arrays(dataset):
    ds = data.Dataset(dataset)
    cid = sorted(ds.cases)[0]
    st = ds.load(cid)
    assert st.ct.shape == st.pet.shape == st.label.shape
    # CTres is cubic and unclipped, as autoPET's: it overshoots below -1024 HU at sharp air edges.
    assert st.ct.dtype == np.float32 and -2500 < st.ct.min() < -1000 and st.pet.min() >= 0
    assert set(np.unique(st.label)) <= {0, 1}


def test_iter_load_gives_each_case_in_order(dataset, tmp_path):
    ds = data.Dataset(dataset)
    ids = sorted(ds.cases)[::-1][:3]  # not the folder's order
    studies = list(ds.iter_load(ids))
    assert [st.id for st in studies] == ids
    for st in studies:
        ref = io.load(dataset / "imagesTr" / f"{st.id}_0001.nii.gz")
        np.testing.assert_array_equal(st.pet, ref.data)
        np.testing.assert_array_equal(st.label, io.load(dataset / "labelsTr" / f"{st.id}.nii.gz").data)
    with pytest.raises(KeyError, match="'nope' is not a case of"):
        next(ds.iter_load([ids[0], "nope"]))  # every id is checked before any file is read
    # A case whose label lies on another grid: the error names the file when that case is reached.
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    lab = io.load(broken / "labelsTr" / f"{ids[1]}.nii.gz")
    io.save(broken / "labelsTr" / f"{ids[1]}.nii.gz", np.asarray(lab.data)[:-1], lab.affine, overwrite=True)
    it = data.Dataset(broken).iter_load(ids)
    assert next(it).id == ids[0]
    with pytest.raises(ValueError, match=f"{ids[1]}.nii.gz"):
        next(it)


def test_same_seed_same_dataset(dataset, tmp_path):
    data.write_phantom_dataset(tmp_path / "again", cases=6, tracer="mixed", seed=7, scale=0.2)
    for p in sorted((dataset / "labelsTr").iterdir()):
        np.testing.assert_array_equal(io.load(p).data, io.load(tmp_path / "again" / "labelsTr" / p.name).data)


def test_check_passes_and_cli(dataset, capsys):
    assert data.Dataset(dataset).check() == []
    assert main(["check", str(dataset), "--quiet"]) == 0
    assert "no problems" in capsys.readouterr().out


def test_check_reports_each_problem(dataset, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    ids = sorted(data.Dataset(broken).cases)
    (broken / "imagesTr" / f"{ids[0]}_0001.nii.gz").unlink()  # missing channel
    lab = io.load(broken / "labelsTr" / f"{ids[1]}.nii.gz")
    bad = np.asarray(lab.data).copy()
    bad[0, 0, 0] = 2
    io.save(broken / "labelsTr" / f"{ids[1]}.nii.gz", bad, lab.affine, overwrite=True)  # label outside {0, 1}
    pet = io.load(broken / "imagesTr" / f"{ids[2]}_0001.nii.gz")
    io.save(broken / "imagesTr" / f"{ids[2]}_0001.nii.gz", pet.data[:-1], pet.affine, overwrite=True)  # grid
    (broken / "imagesTr" / f"{ids[3]}_0000.nii.gz").write_bytes(b"\x1f\x8b garbage")  # unreadable
    lab = io.load(broken / "labelsTr" / f"{ids[2]}.nii.gz")
    io.save(broken / "labelsTr" / f"{ids[2]}.nii.gz", np.asarray(lab.data, np.float32) * 0.5, lab.affine,
            overwrite=True)  # probabilities, not labels
    pet = io.load(broken / "imagesTr" / f"{ids[5]}_0001.nii.gz")
    nan_pet = np.asarray(pet.data).copy()
    nan_pet[1, 2, 3] = np.nan
    io.save(broken / "imagesTr" / f"{ids[5]}_0001.nii.gz", nan_pet, pet.affine, overwrite=True)
    lab = io.load(broken / "labelsTr" / f"{ids[0]}.nii.gz")
    neg = np.asarray(lab.data, np.int16).copy()
    neg[1, 1, 1] = -1
    io.save(broken / "labelsTr" / f"{ids[0]}.nii.gz", neg, lab.affine, overwrite=True)  # below the range
    (broken / "labelsTr" / f"{ids[3]}.nii.gz").unlink()  # missing label
    splits = json.loads((broken / "splits_final.json").read_text())
    for s in splits:
        for key in ("train", "val"):
            s[key] = [c for c in s[key] if c != ids[4]]
    (broken / "splits_final.json").write_text(json.dumps(splits))
    problems = data.Dataset(broken).check()
    text = "\n".join(problems)
    assert f"{ids[0]}: missing channel" in text
    assert f"{ids[1]}: label values [2]" in text
    assert f"{ids[2]}: grid mismatch" in text
    assert f"{ids[3]}: unreadable" in text
    assert f"{ids[4]}: not in any fold" in text
    assert f"{ids[2]}: label values are not whole numbers (e.g. 0.5)" in text
    assert f"{ids[5]}: {ids[5]}_0001.nii.gz contains NaN or infinite values" in text
    assert f"{ids[0]}: label values [-1]" in text and f"{ids[3]}: missing label" in text
    assert not any(p.startswith((f"{ids[4]}:", f"{ids[5]}: label")) and "fold" not in p for p in problems)
    assert main(["check", str(broken), "--quiet"]) == 1
    assert len(capsys.readouterr().out.strip().splitlines()) == len(problems)


def test_nnunet_accepts_the_dataset(dataset):
    integrity = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    integrity.verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem


def test_raw_studies_resample_ct_like_ctres(dataset):
    ds = data.Dataset(dataset)
    folders = sorted((dataset / "raw").glob("*/*"))
    assert len(folders) == 6
    for folder in folders[:2]:
        raw = data.load_raw_study(folder)
        cid = next(c for c in ds.cases if folder.name in c)
        st = ds.load(cid)
        # Same CTres rule as the nnU-Net copy; NIfTI keeps affines in float32, hence 0.05 HU.
        np.testing.assert_allclose(raw.ct, st.ct, atol=0.05)
        np.testing.assert_array_equal(raw.label, st.label)


def test_phantom_cli_refuses_to_overwrite(tmp_path, capsys):
    args = ["phantom", "--out", str(tmp_path / "d"), "--cases", "5", "--scale", "0.15", "--quiet"]
    assert main(args) == 0
    assert main(args) == 1
    assert "overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_bad_datasets(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.Dataset(tmp_path / "nothing")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        data.Dataset(tmp_path / "d")
    (tmp_path / "d" / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        data.Dataset(tmp_path / "d")
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}}))
    (tmp_path / "d" / "imagesTr").mkdir()
    (tmp_path / "d" / "splits_final.json").write_text("[{bad")
    with pytest.raises(ValueError, match="splits_final.json: not valid JSON"):  # the error names the file
        data.Dataset(tmp_path / "d")
    (tmp_path / "d" / "splits_final.json").unlink()
    (tmp_path / "d" / "imagesTr" / "fdg_0011223344_study_0000.nii.gz").mkdir()  # a folder is not a case
    assert len(data.Dataset(tmp_path / "d")) == 0
    with pytest.raises(ValueError, match="tracer"):
        data.write_phantom_dataset(tmp_path / "x", cases=5, tracer="fet")
    with pytest.raises(ValueError, match="scale must be"):
        data.write_phantom_dataset(tmp_path / "x", cases=5, scale=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        data.write_phantom_dataset(tmp_path / "x", cases=5, seed=-1)
    assert not (tmp_path / "x").exists()  # bad arguments write nothing
    with pytest.raises(ValueError, match="case id"):
        data.parse_case_id("nounderscore")
    with pytest.raises(KeyError, match="'nope' is not a case of"):
        data.Dataset(tmp_path / "d").load("nope")
