"""Whole-body cases for the benchmarks."""
import numpy as np


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


def synced(fn):
    """fn followed by a CUDA device synchronisation, so that a benchmark times the GPU work."""
    import torch

    def run(*a, **k):
        out = fn(*a, **k)
        torch.cuda.synchronize()
        return out

    return run


def cuda_times(fn, *args, runs=3):
    """Seconds of each of ``runs`` calls of fn(*args), the GPU synchronised before and after each (the
    first run includes warm-up: cuDNN autotuning, compilation)."""
    import time

    import torch

    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times
