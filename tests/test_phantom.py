"""Synthetic studies: geometry, determinism, lesion truth, tissue values, and real-anatomy mode."""
import numpy as np
import pytest

import petfast
from petfast import io, phantom
from petfast.phantom import HU, SUV, T

from _testdata import organ_maps


@pytest.fixture(scope="module")
def fdg():
    return phantom.make_study("fdg", seed=11, scale=0.25, diagnosis="MELANOMA")


@pytest.fixture(scope="module")
def psma():
    return phantom.make_study("psma", seed=12, scale=0.25, diagnosis="PROSTATE_CANCER")


def test_deterministic_for_a_seed():
    a = phantom.make_study("psma", seed=5, scale=0.2)
    b = phantom.make_study("psma", seed=5, scale=0.2)
    c = phantom.make_study("psma", seed=6, scale=0.2)
    for name in ("ct", "pet", "label", "ct_affine", "pet_affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.pet, c.pet)


@pytest.mark.parametrize("scanner", sorted(phantom.SCANNERS))
def test_scanner_grids(scanner):
    s = phantom.make_study("fdg", scanner=scanner, seed=1, scale=0.2)
    sc = phantom.SCANNERS[scanner]
    pet_sp = np.abs(np.diag(s.pet_affine)[:3])
    ct_sp = np.abs(np.diag(s.ct_affine)[:3])
    np.testing.assert_allclose(pet_sp[:2], np.array(sc.pet_spacing[:2]) / 0.2, rtol=1e-6)
    assert s.pet.shape[0] == round(sc.pet_matrix * 0.2) and s.ct.shape[0] == round(sc.ct_matrix * 0.2)
    assert s.pet_affine[0, 0] < 0 < s.pet_affine[1, 1]  # LAS, as autoPET's files
    assert 850 < s.pet.shape[2] * pet_sp[2] < 1050  # whole body: mid-thigh to vertex
    assert s.ct.shape[2] * ct_sp[2] > s.pet.shape[2] * pet_sp[2]  # the CT has its own, longer FOV
    assert s.ct.dtype == np.int16 and s.pet.dtype == np.float32 and s.label.dtype == np.uint8


def test_lesion_masks_match_placed_lesions(fdg, psma):
    for s in (fdg, psma):
        assert len(s.lesions) >= 1 and s.label.sum() > 0
        # Every placed lesion centre lies inside the mask (or the lesion is smaller than a voxel).
        inv = np.linalg.inv(s.pet_affine)
        for les in s.lesions:
            ijk = np.rint(inv[:3, :3] @ les.centre_mm + inv[:3, 3]).astype(int)
            if np.all((ijk >= 0) & (ijk < s.label.shape)) and les.radii_mm.min() > max(np.abs(np.diag(s.pet_affine)[:3])):
                assert s.label[tuple(ijk)] == 1, les.kind
        # Lesions are hot: mean SUV inside the mask well above the body background.
        body = s.tissue > 0
        assert s.pet[s.label > 0].mean() > 2 * np.median(s.pet[body & (s.label == 0)])


def test_negative_studies_have_no_lesions():
    s = phantom.make_study("fdg", seed=3, scale=0.2, diagnosis="NEGATIVE")
    assert s.lesions == [] and s.label.sum() == 0


def test_tissue_values(fdg, psma):
    """HU of the CT and SUV of the PET per tissue stay near the documented values."""
    for s, tracer in ((fdg, "fdg"), (psma, "psma")):
        ct_on_pet = petfast.resample(s.ct, s.ct_affine, s.pet.shape, s.pet_affine, order=0, fill=-1000)
        for name in ("lung", "liver", "soft", "kidney"):
            inside = (s.tissue == T[name]) & (s.label == 0)
            if inside.sum() < 20:
                continue
            assert np.median(ct_on_pet[inside]) == pytest.approx(HU[T[name]], abs=60), name
            # PSF blur mixes small organs with their surroundings: compare with a generous band.
            assert 0.4 * SUV[tracer][T[name]] < np.median(s.pet[inside]) < 1.6 * SUV[tracer][T[name]] + 0.3, name
        air = s.tissue == T["air"]
        assert np.median(s.pet[air]) < 0.1 and s.pet.min() >= 0
    assert np.median(psma.pet[psma.tissue == T["kidney"]]) > 3 * np.median(fdg.pet[fdg.tissue == T["kidney"]])


def test_pet_noise_at_scanner_level(fdg):
    liver = (fdg.tissue == T["liver"]) & (fdg.label == 0)
    cov = fdg.pet[liver].std() / fdg.pet[liver].mean()
    assert 0.02 < cov < 0.4


def test_bad_arguments():
    with pytest.raises(ValueError, match="tracer"):
        phantom.make_study("fet")
    with pytest.raises(ValueError, match="scanner"):
        phantom.make_study("fdg", scanner="nope")
    with pytest.raises(ValueError, match="scale"):
        phantom.make_study("fdg", scale=2)
    with pytest.raises(ValueError, match="diagnosis"):
        phantom.make_study("psma", diagnosis="MELANOMA")


@pytest.mark.skipif(not organ_maps(), reason="../shared/data/organs not present")
def test_anatomy_from_a_real_organ_map():
    path = organ_maps()[-1]
    org = io.load(path)
    tracer = "psma" if path.name.startswith("psma") else "fdg"
    s = phantom.make_study(tracer, seed=2, organ_map=org.data, organ_affine=org.affine)
    assert s.pet.shape == org.data.shape
    np.testing.assert_allclose(s.pet_affine, org.affine)
    liver = np.asarray(org.data) == 3
    assert np.all(s.tissue[liver & (s.label == 0)] == T["liver"])
    assert np.median(s.pet[liver]) > np.median(s.pet[s.tissue == T["soft"]])
