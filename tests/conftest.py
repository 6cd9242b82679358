import os

import numpy as np
import pytest

import petfast


@pytest.fixture
def rng(request):
    """A fresh generator per test; the seed is printed so that a failure can be replayed."""
    seed = int(os.environ.get("PETFAST_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed for {request.node.name}: {seed} (PETFAST_TEST_SEED={seed} replays it)")
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    if petfast.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs the CUDA kernels and a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

