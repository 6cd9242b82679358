"""pytest-benchmark suite: petfast against its peers in the same run, reported as ratios.

    pytest bench                     quick sizes (what CI runs, so the suite never rots)
    pytest bench --full              the issue's full sizes (CT 512x512x489 -> PET 400x400x326)
    pytest bench --benchmark-json=out.json --benchmark-autosave / --benchmark-compare-fail=median:10%

Each benchmark belongs to a group; within a group the test named 'petfast' is compared with every
peer, and the ratios (peer median / petfast median) are printed at the end and stored in the JSON
as extra_info.
"""
import numpy as np
import pytest

_RESULTS: dict[str, dict[str, float]] = {}


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="benchmark the full whole-body sizes")


@pytest.fixture(scope="session")
def full(request):
    return request.config.getoption("--full")


@pytest.fixture
def record(benchmark):
    """Call record(group, name) after benchmark(...) to enter the run into the ratio table."""

    def _record(group, name):
        median = benchmark.stats.stats.median
        _RESULTS.setdefault(group, {})[name] = median
        benchmark.extra_info["median_ms"] = median * 1e3

    return _record


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("petfast speed-up over peers (peer median / petfast median, same run)")
    for group, runs in sorted(_RESULTS.items()):
        ours = runs.get("petfast")
        for name, t in sorted(runs.items()):
            ratio = f"{t / ours:6.2f}x" if ours and name != "petfast" else "      "
            tr.write_line(f"{group:28s} {name:34s} {t * 1e3:10.3f} ms  {ratio}")


def whole_body_grids(full: bool):
    """(CT shape, CT affine, PET shape, PET affine) as in autoPET: LAS, CT 0.98 mm, PET 2.04 x 3 mm."""
    if full:
        ct_shape, pet_shape = (512, 512, 489), (400, 400, 326)
    else:
        ct_shape, pet_shape = (128, 128, 122), (100, 100, 82)
    ct_sp = (0.9766 * 512 / ct_shape[0], 0.9766 * 512 / ct_shape[1], 2.0 * 489 / ct_shape[2])
    pet_sp = (2.0364 * 400 / pet_shape[0], 2.0364 * 400 / pet_shape[1], 3.0 * 326 / pet_shape[2])

    def affine(shape, sp):
        a = np.diag([-sp[0], sp[1], sp[2], 1.0])
        a[:3, 3] = [(shape[0] - 1) / 2 * sp[0], -(shape[1] - 1) / 2 * sp[1], -(shape[2] - 1) / 2 * sp[2]]
        return a

    return ct_shape, affine(ct_shape, ct_sp), pet_shape, affine(pet_shape, pet_sp)


def synthetic_ct(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    y = np.linspace(-1, 1, shape[1])[None, :, None]
    ct = np.where(x**2 / 0.8 + y**2 / 0.5 <= 1, 40, -1000) + np.zeros(shape, np.int16)
    return (ct + rng.normal(0, 12, shape)).astype(np.int16)
