"""pytest-benchmark suite: petfast against its peers in the same run, reported as ratios.

    pytest bench                     quick sizes (what CI runs, so the suite never rots)
    pytest bench --full              the issue's full sizes (CT 512x512x489 -> PET 400x400x326)
    pytest bench --benchmark-json=out.json --benchmark-autosave / --benchmark-compare-fail=median:10%

Each benchmark belongs to a group; within a group every run whose name starts with 'petfast' is
compared with every peer (peer median / petfast median), printed at the end; medians are stored in
the JSON as extra_info.
"""
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
    tr.section("petfast against peers (speed-up = peer median / petfast median, same run)")
    for group, runs in sorted(_RESULTS.items()):
        peers = {n: t for n, t in runs.items() if not n.startswith("petfast")}
        for name, t in sorted(runs.items()):
            vs = ", ".join(f"{p / t:.2f}x {n}" for n, p in peers.items()) if name.startswith("petfast") else ""
            tr.write_line(f"{group:28s} {name:34s} {t * 1e3:10.3f} ms  {vs}")
