"""Synthetic whole-body PET/CT studies with known lesion masks, for tests, benchmarks, training and the demo.

A study is built in world millimetres (RAS+, patient centred in-plane, z from mid-thigh upwards) and
sampled on two grids, as a scanner would: the CT on its own fine grid and field of view (int16 HU),
the PET on the scanner's coarse grid (float32 SUV, blurred by the scanner's point spread function and
with count-dependent noise). The lesion mask lives on the PET grid, like autoPET's manual masks.
Both grids are LAS, as dicom2nifti writes autoPET's files.

Anatomy is procedural (no data needed) or taken from an organ label map on a real scanner grid (such as
autoPET's TotalSegmentator maps: 1 spleen, 2 kidneys, 3 liver, 4 bladder, 5 lungs, 6 brain, 7 heart,
8 stomach, 9 prostate, 10 salivary glands). Everything is deterministic for a seed.

Tissue values (before per-study variation of about +-20 %):

============== ====== ========= ==========
tissue         CT HU  FDG SUV   PSMA SUV
============== ====== ========= ==========
air            -1000  0         0
fat            -100   0.3       0.15
soft tissue    40     0.7       0.4
lung           -850   0.4       0.3
bone           500    1.1       0.8
brain          35     8         0.2
heart          45     3.5       1.2
liver          55     2.3       5.5
kidney         35     3.5       25
bladder        10     12        20
spleen         45     2         7
salivary gland 30     1.5       14
bowel          20     1.8       4
stomach        25     1.8       2
blood (aorta)  45     1.7       1
prostate       40     0.9       2.5
============== ====== ========= ==========
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TISSUES = ["air", "fat", "soft", "lung", "bone", "brain", "heart", "liver", "kidney", "bladder", "spleen",
           "salivary", "bowel", "stomach", "blood", "prostate"]
T = {name: i for i, name in enumerate(TISSUES)}
HU = np.array([-1000, -100, 40, -850, 500, 35, 45, 55, 35, 10, 45, 30, 20, 25, 45, 40], np.float32)
SUV = {
    "fdg": np.array([0, 0.3, 0.7, 0.4, 1.1, 8, 3.5, 2.3, 3.5, 12, 2, 1.5, 1.8, 1.8, 1.7, 0.9], np.float32),
    "psma": np.array([0, 0.15, 0.4, 0.3, 0.8, 0.2, 1.2, 5.5, 25, 20, 7, 14, 4, 2, 1, 2.5], np.float32),
}
# Organ labels of autoPET's TotalSegmentator maps -> tissues.
ORGAN_LABELS = {1: "spleen", 2: "kidney", 3: "liver", 4: "bladder", 5: "lung", 6: "brain", 7: "heart",
                8: "stomach", 9: "prostate", 10: "salivary"}


@dataclass(frozen=True)
class Scanner:
    """A scanner's PET and CT grids. Spacing in mm along (i, j, k); PSF as FWHM in mm."""

    name: str
    pet_matrix: int
    pet_spacing: tuple
    ct_matrix: int
    ct_spacing: tuple
    psf_fwhm_mm: float
    noise: float  # relative noise of a voxel at SUV 1 on this scanner's grid


# The four scanner types of the autoPET FDG/PSMA data (grids of real studies; see shared/data/README).
SCANNERS = {
    "biograph_mct": Scanner("Siemens Biograph mCT", 400, (2.0364, 2.0364, 3.0), 512, (0.9766, 0.9766, 3.0), 6.0, 0.30),
    "biograph_mct_flow": Scanner("Siemens Biograph mCT Flow", 200, (4.0728, 4.0728, 2.0), 512, (0.9766, 0.9766, 2.0), 7.0, 0.15),
    "discovery_690": Scanner("GE Discovery 690", 256, (2.7344, 2.7344, 3.27), 512, (0.9766, 0.9766, 3.75), 6.5, 0.22),
    "discovery_mi": Scanner("GE Discovery MI", 256, (2.7344, 2.7344, 2.79), 512, (0.9766, 0.9766, 2.5), 5.0, 0.20),
}
DEFAULT_SCANNER = {"fdg": "biograph_mct", "psma": "discovery_690"}


@dataclass
class Lesion:
    kind: str
    centre_mm: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray
    suv_max: float
    hu: float
    wobble: tuple  # surface perturbation (amplitude, phase a, phase b)


@dataclass
class Study:
    """One synthetic study. Arrays are indexed (i, j, k) with LAS affines in mm."""

    tracer: str
    scanner: str
    ct: np.ndarray          # int16 HU on the CT grid
    ct_affine: np.ndarray
    pet: np.ndarray         # float32 SUV on the PET grid
    pet_affine: np.ndarray
    label: np.ndarray       # uint8 lesion mask on the PET grid
    tissue: np.ndarray      # uint8 tissue ids (TISSUES) on the PET grid, without lesions
    lesions: list = field(default_factory=list)
    diagnosis: str = ""
    seed: int = 0


class _Grid:
    """An axis-aligned LAS grid: world coordinates of voxel centres per axis (1-D)."""

    def __init__(self, shape, spacing, origin):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.affine = np.diag([-self.spacing[0], self.spacing[1], self.spacing[2], 1.0])
        self.affine[:3, 3] = origin
        self.x = origin[0] - self.spacing[0] * np.arange(self.shape[0])
        self.y = origin[1] + self.spacing[1] * np.arange(self.shape[1])
        self.z = origin[2] + self.spacing[2] * np.arange(self.shape[2])

    @classmethod
    def centred(cls, matrix_xy, nz, spacing, z0):
        half = [(matrix_xy - 1) / 2 * spacing[0], -(matrix_xy - 1) / 2 * spacing[1], z0]
        return cls((matrix_xy, matrix_xy, nz), spacing, half)

    @classmethod
    def from_affine(cls, shape, affine):
        a = np.asarray(affine, float)
        if not (np.allclose(a[:3, :3], np.diag(np.diag(a[:3, :3])), atol=1e-6) and a[0, 0] < 0 < a[1, 1] and a[2, 2] > 0):
            raise ValueError("organ-map anatomy needs an axis-aligned LAS grid (as autoPET's files have)")
        return cls(shape, (-a[0, 0], a[1, 1], a[2, 2]), a[:3, 3])

    def box(self, lo, hi):
        """Index slices of the voxels whose centres may lie in the world box [lo, hi] (mm)."""
        out = []
        for coords, l, h in zip((self.x, self.y, self.z), lo, hi):
            idx = np.nonzero((coords >= l) & (coords <= h))[0]
            out.append(slice(idx[0], idx[-1] + 1) if idx.size else slice(0, 0))
        return tuple(out)

    def coords(self, box):
        return self.x[box[0]][:, None, None], self.y[box[1]][None, :, None], self.z[box[2]][None, None, :]


def _paint_ellipsoid(vol, grid, tissue, centre, radii, where=None):
    c, r = np.asarray(centre, float), np.asarray(radii, float)
    box = grid.box(c - r, c + r)
    x, y, z = grid.coords(box)
    inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
    if where is not None:
        inside &= np.isin(vol[box], where)
    vol[box][inside] = tissue


def _paint_cylinder(vol, grid, tissue, centre_xy, radii_xy, z_lo, z_hi, where=None):
    c, r = np.asarray(centre_xy, float), np.asarray(radii_xy, float)
    box = grid.box([c[0] - r[0], c[1] - r[1], z_lo], [c[0] + r[0], c[1] + r[1], z_hi])
    x, y, _ = grid.coords(box)
    inside = (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 <= 1) & np.ones(vol[box].shape, bool)
    if where is not None:
        inside &= np.isin(vol[box], where)
    vol[box][inside] = tissue


class _Anatomy:
    """Procedural body: landmarks as fractions of the height H of the field of view (mid-thigh to vertex)."""

    def __init__(self, rng, height_mm, sex):
        self.H = height_mm
        self.sex = sex
        j = lambda s=0.06: 1 + rng.uniform(-s, s)  # noqa: E731 - per-study size jitter
        self.torso = np.array([165 * j(), 112 * j()])
        self.shift = rng.uniform(-8, 8, 2)  # patient off-centre on the table
        self.organ_jitter = {name: rng.uniform(-10, 10, 3) for name in TISSUES}
        self.bowel = [(rng.uniform(-90, 90), rng.uniform(-20, 60), rng.uniform(0.31, 0.47) * height_mm,
                       rng.uniform(18, 32)) for _ in range(9)]

    def paint(self, grid, organ_map=None):
        """Tissue ids on `grid`; organs from `organ_map` (on this grid) when given."""
        H, sx, sy = self.H, self.shift[0], self.shift[1]
        vol = np.zeros(grid.shape, np.uint8)
        a, b = self.torso
        z = grid.z
        # Torso, neck and head as elliptic cross-sections that vary with z; legs below the pelvis.
        f = z / H
        ax = np.where(f < 0.22, 0, np.where(f < 0.82, a * (1 - 0.15 * np.clip((f - 0.72) / 0.1, 0, 1)), np.where(f < 0.875, 58, 0)))
        bx = np.where(f < 0.22, 0, np.where(f < 0.82, b, np.where(f < 0.875, 55, 0)))
        x, y = grid.x[:, None, None] - sx, grid.y[None, :, None] - sy
        with np.errstate(divide="ignore", invalid="ignore"):
            body = (x / ax) ** 2 + (y / bx) ** 2 <= 1
            fat = (x / (ax - 14)) ** 2 + (y / (bx - 14)) ** 2 > 1
        vol[body & ~fat] = T["soft"]
        vol[body & fat] = T["fat"]
        for side in (-1, 1):  # legs: fat rim and muscle
            _paint_cylinder(vol, grid, T["fat"], (sx + side * 88, sy), (78, 80), z[0] - 1, 0.22 * H)
            _paint_cylinder(vol, grid, T["soft"], (sx + side * 88, sy), (66, 68), z[0] - 1, 0.22 * H)
            _paint_cylinder(vol, grid, T["bone"], (sx + side * 92, sy), (14, 14), z[0] - 1, 0.21 * H)  # femur
        _paint_ellipsoid(vol, grid, T["fat"], (sx, sy, 0.94 * H), (82, 96, 0.068 * H))  # head
        _paint_ellipsoid(vol, grid, T["bone"], (sx, sy, 0.94 * H), (76, 90, 0.062 * H))  # skull
        _paint_ellipsoid(vol, grid, T["brain"], (sx, sy, 0.945 * H), (69, 83, 0.054 * H))
        # Skeleton.
        _paint_cylinder(vol, grid, T["bone"], (sx, sy - 72), (17, 17), 0.24 * H, 0.86 * H)  # spine
        for side in (-1, 1):
            _paint_ellipsoid(vol, grid, T["bone"], (sx + side * 82, sy - 25, 0.265 * H), (40, 48, 0.04 * H))  # iliac
        # Organs.
        o = lambda name, c: np.add(c, self.organ_jitter[name])  # noqa: E731
        if organ_map is None:
            for side in (-1, 1):
                _paint_ellipsoid(vol, grid, T["lung"], o("lung", (sx + side * 78, sy + 5, 0.735 * H)), (58, 78, 0.075 * H))
                _paint_ellipsoid(vol, grid, T["kidney"], o("kidney", (sx + side * 68, sy - 42, 0.52 * H)), (30, 24, 0.05 * H))
                _paint_ellipsoid(vol, grid, T["salivary"], o("salivary", (sx + side * 46, sy + 2, 0.9 * H)), (14, 16, 0.018 * H))
            _paint_ellipsoid(vol, grid, T["heart"], o("heart", (sx - 22, sy + 30, 0.70 * H)), (50, 45, 0.055 * H))
            _paint_ellipsoid(vol, grid, T["liver"], o("liver", (sx + 65, sy + 10, 0.585 * H)), (85, 75, 0.07 * H))
            _paint_ellipsoid(vol, grid, T["spleen"], o("spleen", (sx - 85, sy - 25, 0.6 * H)), (32, 40, 0.045 * H))
            _paint_ellipsoid(vol, grid, T["stomach"], o("stomach", (sx - 45, sy + 40, 0.6 * H)), (40, 30, 0.04 * H))
            _paint_ellipsoid(vol, grid, T["bladder"], o("bladder", (sx, sy + 30, 0.275 * H)), (42, 36, 0.032 * H))
            if self.sex == "M":
                _paint_ellipsoid(vol, grid, T["prostate"], (sx, sy + 8, 0.24 * H), (18, 16, 0.018 * H))
        else:
            for label, name in ORGAN_LABELS.items():
                vol[organ_map == label] = T[name]
        _paint_cylinder(vol, grid, T["blood"], (sx - 10, sy - 35), (12, 12), 0.45 * H, 0.72 * H, where=[T["soft"], T["fat"]])
        for bx_, by_, bz_, r in self.bowel:
            _paint_ellipsoid(vol, grid, T["bowel"], (sx + bx_, sy + by_, bz_), (r, r, r), where=[T["soft"], T["fat"]])
        return vol


# Lesion kinds per tracer: (kind, tissues that may host it, radius range mm, SUVmax range, CT HU, weight).
_LESIONS = {
    "fdg": [("lymph node", ("soft", "fat"), (4, 16), (3, 18), 40, 5), ("lung nodule", ("lung",), (3, 14), (2.5, 15), 30, 2),
            ("liver metastasis", ("liver",), (5, 22), (4, 16), 35, 2), ("bone metastasis", ("bone",), (5, 15), (4, 14), 250, 1),
            ("bulky lymphoma", ("soft",), (15, 35), (6, 25), 40, 1)],
    "psma": [("lymph node", ("soft", "fat"), (3, 12), (5, 40), 40, 5), ("bone metastasis", ("bone",), (4, 16), (6, 60), 600, 3),
             ("prostate primary", ("prostate",), (6, 16), (8, 50), 45, 2), ("liver metastasis", ("liver",), (5, 15), (5, 30), 35, 1),
             ("lung nodule", ("lung",), (3, 10), (4, 25), 30, 1)],
}
DIAGNOSES = {"fdg": ["MELANOMA", "LYMPHOMA", "LUNG_CANCER", "NEGATIVE"], "psma": ["PROSTATE_CANCER", "NEGATIVE"]}


def _random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _lesion_distance(les: Lesion, grid: _Grid):
    """Normalised distance (1 on the wobbly surface) within the lesion's box, and the box."""
    reach = les.radii_mm.max() * 1.35
    box = grid.box(les.centre_mm - reach, les.centre_mm + reach)
    x, y, z = grid.coords(box)
    d = [x - les.centre_mm[0], y - les.centre_mm[1], z - les.centre_mm[2]]
    local = [sum(les.rotation[r, c] * d[c] for c in range(3)) / les.radii_mm[r] for r in range(3)]
    rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
    amp, pa, pb = les.wobble
    theta = np.arctan2(local[1], local[0])
    phi = np.arctan2(local[2], np.hypot(local[0], local[1]) + 1e-9)
    return rho / (1 + amp * np.sin(3 * theta + pa) * np.cos(2 * phi + pb)), box


def _sample_lesions(rng, tracer, tissue, grid, diagnosis):
    if diagnosis == "NEGATIVE":
        return []
    kinds = _LESIONS[tracer]
    weights = np.array([k[5] for k in kinds], float)
    n = int(rng.integers(1, 13 if tracer == "fdg" else 16))
    lesions = []
    hosts_of = {}  # voxel candidates per host set, found once
    for _ in range(n):
        kind, hosts, (r0, r1), (s0, s1), hu, _w = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        if diagnosis == "LYMPHOMA" and kind == "lung nodule":
            kind, hosts, hu = "lymph node", ("soft", "fat"), 40
        if hosts not in hosts_of:
            hosts_of[hosts] = np.argwhere(np.isin(tissue, [T[h] for h in hosts]))
        candidates = hosts_of[hosts]
        if candidates.size == 0:
            continue
        i, j, k = candidates[rng.integers(len(candidates))]
        centre = np.array([grid.x[i], grid.y[j], grid.z[k]]) + rng.uniform(-1, 1, 3) * np.array(grid.spacing) / 2
        r = rng.uniform(r0, r1)
        lesions.append(Lesion(kind, centre, r * rng.uniform(0.7, 1.3, 3), _random_rotation(rng),
                              float(rng.uniform(s0, s1)), float(hu), (rng.uniform(0, 0.2), rng.uniform(0, 6.3), rng.uniform(0, 6.3))))
    return lesions


def check_seed_and_scale(seed, scale) -> None:
    """ValueError unless seed is a non-negative integer and scale in (0, 1]."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (0 < scale <= 1):
        raise ValueError(f"scale must be in (0, 1], got {scale}")


def make_study(tracer: str = "fdg", scanner: str | None = None, seed: int = 0, scale: float = 1.0,
               organ_map=None, organ_affine=None, diagnosis: str | None = None) -> Study:
    """A synthetic whole-body study.

    tracer: 'fdg' or 'psma'. scanner: a key of SCANNERS (default: Biograph mCT for FDG, Discovery 690
    for PSMA). scale: voxel count factor per axis (0.25 gives 4x coarser voxels over the same field of
    view, for fast tests). organ_map / organ_affine: real anatomy (a label map on its PET grid, labels
    as ORGAN_LABELS); the PET grid is then that map's grid and `scanner` sets PSF, noise and CT grid.
    diagnosis: one of DIAGNOSES[tracer] ('NEGATIVE' gives no lesions); random when None.
    """
    if tracer not in SUV:
        raise ValueError(f"tracer must be 'fdg' or 'psma', got {tracer!r}")
    scanner = scanner or DEFAULT_SCANNER[tracer]
    if scanner not in SCANNERS:
        raise ValueError(f"unknown scanner {scanner!r}; choose one of {sorted(SCANNERS)}")
    check_seed_and_scale(seed, scale)
    sc = SCANNERS[scanner]
    rng = np.random.default_rng(seed)
    if diagnosis is None:
        diagnosis = str(rng.choice(DIAGNOSES[tracer], p=[0.25, 0.25, 0.25, 0.25] if tracer == "fdg" else [0.85, 0.15]))
    elif diagnosis not in DIAGNOSES[tracer]:
        raise ValueError(f"diagnosis for {tracer} must be one of {DIAGNOSES[tracer]}")
    sex = "M" if tracer == "psma" else str(rng.choice(["M", "F"]))

    if organ_map is not None:
        organ_map = np.asarray(organ_map)
        pet_grid = _Grid.from_affine(organ_map.shape, organ_affine)
        height = pet_grid.z[-1] - pet_grid.z[0]
        # Centre the procedural body on the organs so that they sit inside it.
        shift = np.array([0.0, 0.0])
        occupied = np.argwhere(organ_map > 0)
        if occupied.size:
            centre = occupied.mean(0)
            shift = np.array([pet_grid.x[int(centre[0])], pet_grid.y[int(centre[1])]])
        z0 = pet_grid.z[0]
    else:
        height = rng.uniform(900, 1000)
        nz = int(round(height / sc.pet_spacing[2] * scale))
        pet_sp = tuple(s / scale for s in sc.pet_spacing[:2]) + (height / nz,)
        pet_grid = _Grid.centred(max(8, int(round(sc.pet_matrix * scale))), nz, pet_sp, 0.0)
        z0, shift = 0.0, None
    anatomy = _Anatomy(rng, height, sex)
    if shift is not None:
        anatomy.shift = shift
    # Landmarks are relative to the bottom of the field of view.
    tissue_grid = _Shifted(pet_grid, z0)
    tissue = anatomy.paint(tissue_grid, organ_map)
    lesions = _sample_lesions(rng, tracer, tissue, pet_grid, diagnosis)

    # PET: tissue SUVs with per-study variation, lesions hotter at the core, PSF blur, noise.
    suv = SUV[tracer] * rng.uniform(0.8, 1.2, len(TISSUES)).astype(np.float32)
    activity = suv[tissue]
    label = np.zeros(pet_grid.shape, np.uint8)
    for les in lesions:
        d, box = _lesion_distance(les, pet_grid)
        inside = d <= 1
        label[box][inside] = 1
        core = (les.suv_max * (1 - 0.45 * d**2)).astype(np.float32)
        activity[box] = np.where(inside, np.maximum(activity[box], core), activity[box])
    pet = _blur(activity, [sc.psf_fwhm_mm / 2.3548 / s for s in pet_grid.spacing])
    voxel_ml = np.prod(pet_grid.spacing) / 1000
    ref_ml = np.prod(sc.pet_spacing) / 1000
    sigma = sc.noise * np.sqrt(ref_ml / voxel_ml) * np.sqrt(np.maximum(pet, 0.02))
    pet = np.maximum(pet + rng.standard_normal(pet.shape, dtype=np.float32) * sigma.astype(np.float32), 0)

    # CT: its own finer grid, a longer field of view, lesions with their own densities, noise.
    ct_nz = int(round((height + 20) / sc.ct_spacing[2] * scale))
    ct_sp = tuple(s / scale for s in sc.ct_spacing[:2]) + ((height + 20) / ct_nz,)
    ct_grid = _Grid.centred(max(8, int(round(sc.ct_matrix * scale))), ct_nz, ct_sp, z0 - 10)
    ct_organs = None
    if organ_map is not None:
        from .resample import resample

        ct_organs = resample(organ_map.astype(np.uint8), pet_grid.affine, ct_grid.shape, ct_grid.affine, order=0)
    ct_tissue = anatomy.paint(_Shifted(ct_grid, z0), ct_organs)
    hu = HU[ct_tissue]
    for les in lesions:
        d, box = _lesion_distance(les, ct_grid)
        hu[box] = np.where(d <= 1, les.hu, hu[box])
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(15)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Study(tracer, scanner, ct, ct_grid.affine, pet.astype(np.float32, copy=False), pet_grid.affine, label,
                 tissue, lesions, diagnosis, seed)


class _Shifted:
    """A grid whose z is measured from `z0` (anatomy landmarks are fractions of the FOV height)."""

    def __init__(self, grid, z0):
        self._g = grid
        self.shape, self.spacing = grid.shape, grid.spacing
        self.x, self.y, self.z = grid.x, grid.y, grid.z - z0

    def box(self, lo, hi):
        return _Grid.box(self, lo, hi)

    def coords(self, box):
        return _Grid.coords(self, box)


def _blur(volume: np.ndarray, sigmas) -> np.ndarray:
    """Gaussian blur (sigmas in voxels) with petfast's own convolution kernel."""
    from . import _arrays
    from .resample import _smooth

    return np.asarray(_smooth(_arrays.adapt(volume, "volume"), [max(0.0, s) for s in sigmas]).obj)
