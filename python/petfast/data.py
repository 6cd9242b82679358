"""The autoPET dataset in nnU-Net layout, and raw autoPET study folders.

nnU-Net layout (what ``petfast phantom`` writes and ``petfast check`` validates)::

    DATASET/
      imagesTr/<case>_0000.nii.gz   CT in HU, resampled to the PET grid ("CTres")
      imagesTr/<case>_0001.nii.gz   PET in SUV
      labelsTr/<case>.nii.gz        lesion mask, 0/1, on the PET grid
      dataset.json                  channel_names, labels, numTraining, file_ending
      splits_final.json             5 folds: [{"train": [...], "val": [...]}, ...]
      fdg_metadata.csv, psma_metadata.csv

Case ids are ``<tracer>_<patient>_<study>``: the tracer and the patient id never contain '_'; the
study part is everything after the second '_' (autoPET's study names hold dates and spaces).

Raw study folders (autoPET's original layout): ``<patient>/<study>/SUV.nii.gz`` with ``CTres.nii.gz``
(CT on the PET grid) or ``CT.nii.gz`` (CT on its own grid, resampled here onto the PET grid with
:func:`petfast.resample_ct_to_pet`), and ``SEG.nii.gz`` when annotated.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import io
from .components import _finite

CHANNELS = {"0": "CT", "1": "PET"}


@dataclass(frozen=True)
class Case:
    """One case of a dataset: its id, the parsed parts and its files."""

    id: str
    tracer: str
    patient: str
    study: str
    images: tuple  # paths of the channels, in channel order (CT, PET)
    label: Path | None


def parse_case_id(case_id: str) -> tuple[str, str, str]:
    """``'fdg_0011f3deaf_10-03-2003-NA-PET-CT Ganzkoerper'`` -> (tracer, patient, study)."""
    parts = case_id.split("_", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"case id {case_id!r} is not <tracer>_<patient>_<study>")
    return parts[0].lower(), parts[1], parts[2] if len(parts) == 3 else ""


@dataclass
class StudyArrays:
    """A loaded study: CT (HU) and PET (SUV) on the PET grid, the lesion mask if any."""

    id: str
    ct: np.ndarray
    pet: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple


class Dataset:
    """A dataset folder in nnU-Net layout. ``Dataset(path).cases`` maps case ids to :class:`Case`."""

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such dataset folder")
        meta = self.root / "dataset.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta}: missing (an nnU-Net dataset needs dataset.json)")
        self.meta = io.read_json(meta)
        self.file_ending = self.meta.get("file_ending", ".nii.gz")
        self.channels = self.meta.get("channel_names", self.meta.get("modality", CHANNELS))
        self.cases = self._find_cases()
        splits = self.root / "splits_final.json"
        self.splits = io.read_json(splits) if splits.is_file() else None

    def _find_cases(self) -> dict:
        images = self.root / "imagesTr"
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: missing")
        suffix = "_0000" + self.file_ending
        cases = {}
        for p in sorted(f for f in images.glob("*" + suffix) if f.is_file()):
            cid = p.name[: -len(suffix)]
            tracer, patient, study = parse_case_id(cid)
            chans = tuple(images / f"{cid}_{int(c):04d}{self.file_ending}" for c in sorted(self.channels, key=int))
            label = self.root / "labelsTr" / f"{cid}{self.file_ending}"
            cases[cid] = Case(cid, tracer, patient, study, chans, label if label.exists() else None)
        return cases

    def __len__(self):
        return len(self.cases)

    def fold(self, k: int) -> tuple[list, list]:
        """(train ids, validation ids) of fold k of splits_final.json."""
        if self.splits is None:
            raise FileNotFoundError(f"{self.root / 'splits_final.json'}: missing")
        if not 0 <= k < len(self.splits):
            raise ValueError(f"fold {k} does not exist; splits_final.json has {len(self.splits)} folds")
        return list(self.splits[k]["train"]), list(self.splits[k]["val"])

    def metadata(self, tracer: str) -> list[dict]:
        """Rows of <tracer>_metadata.csv as dicts ([] when the file is absent)."""
        path = self.root / f"{tracer}_metadata.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def load(self, case_id: str) -> StudyArrays:
        """CT, PET and label of a case (its files read in parallel); ValueError naming the file when
        grids or labels disagree."""
        return next(self.iter_load([case_id]))

    def iter_load(self, case_ids):
        """:meth:`load` of each case in turn, the next case's files read in the background while the
        caller works on the current one (see :func:`petfast.io.load_ahead`)."""
        case_ids = list(case_ids)
        for cid in case_ids:
            if cid not in self.cases:
                raise KeyError(f"{cid!r} is not a case of {self.root} ({len(self.cases)} cases in imagesTr)")
        cases = [self.cases[cid] for cid in case_ids]
        groups = [[p for p in (*c.images[:2], c.label) if p is not None] for c in cases]
        for cid, paths, pending in zip(case_ids, groups, io.load_ahead(groups)):
            ct, pet, *lab = (f.result() for f in pending)
            _same_grid(ct, pet, paths[0], paths[1])
            if lab:
                _same_grid(lab[0], pet, paths[2], paths[1])
            yield StudyArrays(cid, ct.data, pet.data, lab[0].data if lab else None, pet.affine, pet.spacing)

    def check(self, progress: bool = False) -> list[str]:
        """Every problem found, one line each (empty when the dataset is sound)."""
        problems = []
        expected = self.meta.get("numTraining")
        if expected is not None and expected != len(self.cases):
            problems.append(f"dataset.json: numTraining is {expected} but imagesTr holds {len(self.cases)} cases")
        labels = self.meta.get("labels", {})
        allowed = set(int(v) for v in labels.values()) if labels else {0, 1}
        cases = list(self.cases.values())
        # Each case's files are read while the previous case is checked, several at once.
        present = [[p for p in (*c.images, c.label) if p is not None and p.exists()] for c in cases]
        loaded = zip(cases, present, io.load_ahead(present))
        if progress:
            from tqdm import tqdm

            loaded = tqdm(loaded, total=len(cases), desc="petfast check", unit="case")
        for case, paths, pending in loaded:
            problems += _check_case(case, allowed, dict(zip(paths, pending)))
        if self.splits is None:
            problems.append(f"{self.root / 'splits_final.json'}: missing")
        else:
            in_splits = set()
            for k, split in enumerate(self.splits):
                tr, va = set(split.get("train", [])), set(split.get("val", []))
                in_splits |= tr | va
                if tr & va:
                    problems.append(f"splits_final.json: fold {k} has cases in both train and val: {sorted(tr & va)[:3]}")
                for cid in sorted((tr | va) - set(self.cases)):
                    problems.append(f"splits_final.json: fold {k} names {cid!r}, which is not in imagesTr")
            for cid in sorted(set(self.cases) - in_splits):
                problems.append(f"{cid}: not in any fold of splits_final.json")
        return problems


def _same_grid(a: io.NiftiImage, b: io.NiftiImage, pa, pb, tol=1e-3) -> None:
    if a.data.shape != b.data.shape:
        raise ValueError(f"{pa}: shape {a.data.shape} differs from {pb}'s {b.data.shape}")
    if not np.allclose(a.affine, b.affine, atol=tol):
        raise ValueError(f"{pa}: its grid (affine) differs from {pb}'s; a case's images and label share one grid "
                         "(the CT resampled onto the PET's, as autoPET's CTres: petfast.resample_ct_to_pet)")


def _check_case(case: Case, allowed: set, reads: dict) -> list[str]:
    """The problems of one case; ``reads`` maps each of its files that exists to a future of its
    :func:`io.load` (see :func:`io.load_ahead`)."""
    problems = []
    loaded = []
    for p in case.images:
        if p not in reads:
            problems.append(f"{case.id}: missing channel {p.name}")
            continue
        try:
            img = reads[p].result()
        except (ValueError, OSError) as e:
            problems.append(f"{case.id}: unreadable {p.name}: {e}")
            continue
        loaded.append((p, img))
        if img.data.dtype.kind == "f" and not _finite(img.data):
            problems.append(f"{case.id}: {p.name} contains NaN or infinite values")
    if case.label is None or case.label not in reads:
        problems.append(f"{case.id}: missing label labelsTr/{case.id}.nii.gz")
    else:
        try:
            lab = reads[case.label].result()
            problems += _label_value_problems(case.id, lab.data, allowed)
            loaded.append((case.label, lab))
        except (ValueError, OSError) as e:
            problems.append(f"{case.id}: unreadable label: {e}")
    for p, img in loaded[1:]:
        try:
            _same_grid(img, loaded[0][1], p.name, loaded[0][0].name)
        except ValueError as e:
            problems.append(f"{case.id}: grid mismatch: {e}")
    return problems


def _label_value_problems(case_id: str, data: np.ndarray, allowed: set) -> list[str]:
    # Integer labels within 0..K, when dataset.json allows exactly 0..K (autoPET: 0, 1), are proven
    # sound by their extremes: two reductions instead of np.unique's C-order copy and sort of every
    # voxel (about 0.5 s per whole-body label map, more than reading it).
    if data.dtype.kind in "iub" and allowed == set(range(max(allowed) + 1)):
        if data.size == 0 or (int(data.min()) >= 0 and int(data.max()) <= max(allowed)):
            return []
    unique = np.unique(data.ravel(order="K"))  # a view in memory order: no C-order copy of a NIfTI array
    fractional = unique[unique != np.round(unique)]
    if fractional.size:
        return [f"{case_id}: label values are not whole numbers (e.g. {fractional[0]:g})"]
    values = set(unique.astype(int).tolist())
    if not values <= allowed:
        return [f"{case_id}: label values {sorted(values - allowed)} are not in dataset.json labels {sorted(allowed)}"]
    return []


def load_raw_study(folder) -> StudyArrays:
    """A raw autoPET study folder (SUV.nii.gz + CTres.nii.gz or CT.nii.gz, SEG.nii.gz optional).

    A CT on its own grid is resampled onto the PET grid (cubic B-spline, fill -1024 HU: the same
    operation that made autoPET's CTres).
    """
    from .resample import resample_ct_to_pet

    folder = Path(folder)
    pet = io.load(folder / "SUV.nii.gz")
    if (folder / "CTres.nii.gz").exists():
        ct = io.load(folder / "CTres.nii.gz")
        _same_grid(ct, pet, folder / "CTres.nii.gz", folder / "SUV.nii.gz")
        ct_data = ct.data
    elif (folder / "CT.nii.gz").exists():
        ct = io.load(folder / "CT.nii.gz")
        ct_data = resample_ct_to_pet(ct.data, ct.affine, pet.data.shape, pet.affine, order=3)
    else:
        raise FileNotFoundError(f"{folder}: neither CTres.nii.gz nor CT.nii.gz")
    label = None
    if (folder / "SEG.nii.gz").exists():
        seg = io.load(folder / "SEG.nii.gz")
        _same_grid(seg, pet, folder / "SEG.nii.gz", folder / "SUV.nii.gz")
        label = seg.data
    return StudyArrays(folder.name, ct_data, pet.data, label, pet.affine, pet.spacing)


def write_phantom_dataset(out, cases: int = 10, tracer: str = "mixed", seed: int = 0, scale: float = 1.0,
                          folds: int = 5, raw: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Write `cases` synthetic studies in the nnU-Net layout above (the CT resampled to the PET grid
    with autoPET's CTres rule). With ``raw=True`` each study's CT on its own grid, SUV and SEG are also
    written to ``raw/<patient>/<study>/`` as in autoPET's original release."""
    from .phantom import SCANNERS, check_seed_and_scale, make_study
    from .resample import resample_ct_to_pet

    if tracer not in ("fdg", "psma", "mixed"):
        raise ValueError(f"tracer must be fdg, psma or mixed, got {tracer!r}")
    if cases < folds:
        raise ValueError(f"{cases} cases cannot fill {folds} folds")
    check_seed_and_scale(seed, scale)  # before anything is written
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset; pass overwrite=True (--overwrite) to replace it")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = {"fdg": [], "psma": []}
    ids = []
    it = range(cases)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="petfast phantom", unit="case")
    def save_all(files):
        for path, data, affine in files:
            io.save(path, data, affine, overwrite=overwrite)

    with io.write_behind() as write:  # a study's files are written while the next one is made
        for n in it:
            tr = tracer if tracer != "mixed" else ("fdg" if n % 2 == 0 else "psma")
            study_seed = int(rng.integers(2**31))
            st = make_study(tr, seed=study_seed, scale=scale)
            patient = f"{study_seed:010x}"[-10:]
            study_name = f"{1 + n % 28:02d}-{1 + n % 12:02d}-20{10 + n % 10}-NA-PET-CT Ganzkoerper-{n:05d}"
            cid = f"{tr}_{patient}_{study_name}"
            ids.append(cid)
            ctres = resample_ct_to_pet(st.ct, st.ct_affine, st.pet.shape, st.pet_affine, order=3)
            files = [(out / "imagesTr" / f"{cid}_0000.nii.gz", ctres, st.pet_affine),
                     (out / "imagesTr" / f"{cid}_0001.nii.gz", st.pet, st.pet_affine),
                     (out / "labelsTr" / f"{cid}.nii.gz", st.label, st.pet_affine)]
            if raw:
                folder = out / "raw" / patient / study_name
                folder.mkdir(parents=True, exist_ok=True)
                files += [(folder / "CT.nii.gz", st.ct, st.ct_affine), (folder / "SUV.nii.gz", st.pet, st.pet_affine),
                          (folder / "SEG.nii.gz", st.label, st.pet_affine)]
            write(save_all, files)
            voxel_ml = float(np.prod(np.abs(np.diag(st.pet_affine)[:3]))) / 1000
            rows[tr].append({"case_id": cid, "subject": patient, "study": study_name, "diagnosis": st.diagnosis,
                             "sex": "M" if tr == "psma" else ("F" if study_seed % 2 else "M"),
                             "age": 40 + study_seed % 45, "scanner": SCANNERS[st.scanner].name,
                             "lesions": len(st.lesions), "mtv_ml": round(float(st.label.sum()) * voxel_ml, 3),
                             "seed": study_seed})
    _write_json(out / "dataset.json", {
        "name": "petfast synthetic autoPET", "description": "Synthetic whole-body FDG/PSMA PET/CT (petfast.phantom); not patient data",
        "channel_names": CHANNELS, "labels": {"background": 0, "lesion": 1}, "numTraining": len(ids),
        "file_ending": ".nii.gz", "licence": "CC0"}, overwrite)
    _write_json(out / "splits_final.json", _patient_folds(ids, folds, seed), overwrite)
    for tr, r in rows.items():
        if r:
            _write_csv(out / f"{tr}_metadata.csv", r, overwrite)
    return out


def _patient_folds(ids, k, seed):
    """k folds with every study of a patient in the same fold (nnU-Net's splits are by case)."""
    patients = sorted({parse_case_id(c)[1] for c in ids})
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[p]: n % k for n, p in enumerate(order)}
    return [{"train": [c for c in ids if fold_of[parse_case_id(c)[1]] != f],
             "val": [c for c in ids if fold_of[parse_case_id(c)[1]] == f]} for f in range(k)]


def _atomic_text(path: Path, text: str, overwrite: bool) -> None:
    io.atomic_write(path, lambda f: f.write(text.encode()), overwrite)


def _write_json(path: Path, obj, overwrite: bool) -> None:
    _atomic_text(path, json.dumps(obj, indent=2) + "\n", overwrite)


def _write_csv(path: Path, rows: list[dict], overwrite: bool, fields=None) -> None:
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields or rows[0]))
    w.writeheader()
    w.writerows(rows)
    _atomic_text(path, buf.getvalue(), overwrite)
