"""Sliding-window tiles against nnU-Net v2 and numpy references; CUDA against CPU; bad input."""
import numpy as np
import pytest

import petfast
from petfast import patches



def _sw():
    """nnU-Net's sliding-window module, the peer; imported per test so that the CUDA tests run
    where nnunetv2 is not installed (the GPU machine)."""
    return pytest.importorskip("nnunetv2.inference.sliding_window_prediction")


def test_tile_steps_match_nnunet(rng):
    sw = _sw()
    cases = [((400, 400, 326), (128, 128, 128), 0.5), ((326, 400, 400), (112, 160, 128), 0.5),
             ((64, 64, 64), (64, 64, 64), 0.5), ((30, 200, 90), (64, 64, 64), 0.5)]
    for _ in range(40):
        patch = tuple(int(v) for v in rng.integers(8, 80, 3))
        shape = tuple(int(v) for v in rng.integers(1, 300, 3))
        cases.append((shape, patch, float(rng.choice([0.25, 0.5, 0.7, 1.0]))))
    for shape, patch, step in cases:
        expected = sw.compute_steps_for_sliding_window(patches.padded_shape(shape, patch), patch, step)
        assert patches.tile_steps(shape, patch, step) == expected, (shape, patch, step)
    assert len(patches.tile_origins((400, 400, 326), (128, 128, 128))) == 180  # the anchors' 6x6x5


def test_padding_split_matches_nnunet():
    pad_nd_image = pytest.importorskip("acvl_utils.cropping_and_padding.padding").pad_nd_image

    image = np.ones((1, 30, 70, 5), np.float32)
    padded, slicer = pad_nd_image(image, (64, 64, 64), "constant", {"constant_values": 0}, True, None)
    pads = patches.pad_amounts(image.shape[1:], (64, 64, 64))
    assert padded.shape[1:] == patches.padded_shape(image.shape[1:], (64, 64, 64))
    for axis, (before, _after) in enumerate(pads):
        assert slicer[axis + 1].start == before


@pytest.mark.parametrize("patch", [(128, 128, 128), (112, 160, 128), (24, 40, 9)])
def test_gaussian_matches_nnunet(patch):
    torch = pytest.importorskip("torch")
    sw = _sw()
    for dtype, tdtype in ((np.float32, torch.float32), (np.float16, torch.float16)):
        ref = sw.compute_gaussian(patch, 1.0 / 8, 10, tdtype, torch.device("cpu")).numpy()
        got = patches.gaussian_importance_map(patch, dtype=dtype)
        assert got.dtype == dtype and got.max() == pytest.approx(10, rel=1e-3)
        if dtype == np.float32:
            np.testing.assert_array_equal(got, ref)
        else:  # the float64 maps agree to ~1e-16, so a float16 cast can land one unit apart
            np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=1e-3)


def test_gather_matches_numpy_with_padding(rng):
    volume = rng.normal(size=(2, 20, 17, 15)).astype(np.float32)
    origins = [(0, 0, 0), (-3, 5, 10), (15, -2, -4), (10, 10, 8)]
    tiles = patches.gather_tiles(volume, origins, (8, 6, 9), pad=-7)
    padded = np.pad(volume, ((0, 0), (10, 10), (10, 10), (10, 10)), constant_values=-7)
    for b, (z, y, x) in enumerate(origins):
        np.testing.assert_array_equal(tiles[b], padded[:, z + 10:z + 18, y + 10:y + 16, x + 10:x + 19])
    labels = rng.integers(0, 3, (1, 20, 17, 15)).astype(np.uint8)
    same = patches.gather_tiles(labels, origins[:2], (4, 4, 4), pad=0, dtype=np.uint8)
    assert same.dtype == np.uint8 and np.array_equal(same[0, 0], labels[0, :4, :4, :4])
    many = [(int(z), 0, 0) for z in rng.integers(-2, 18, 300)]  # more than one kernel call's 128
    big = patches.gather_tiles(volume, many, (3, 3, 3))
    for b in (0, 127, 128, 299):
        z = many[b][0]
        ref = np.pad(volume, ((0, 0), (5, 5), (0, 0), (0, 0)))[:, z + 5:z + 8, :3, :3]
        np.testing.assert_array_equal(big[b], ref)


def reference_stitch(volume, predict, patch, num_outputs, step):
    """A plain numpy version of nnU-Net's loop, in float64."""
    pads = patches.pad_amounts(volume.shape[1:], patch)
    padded = np.pad(volume, [(0, 0)] + pads)
    g = patches.gaussian_importance_map(patch).astype(np.float64)
    acc = np.zeros((num_outputs,) + padded.shape[1:])
    wsum = np.zeros(padded.shape[1:])
    for z, y, x in patches.tile_origins(volume.shape[1:], patch, step):
        sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        acc[(slice(None),) + sl] += predict(padded[(slice(None),) + sl][None])[0] * g
        wsum[sl] += g
    logits = acc / wsum
    crop = tuple(slice(p[0], p[0] + s) for p, s in zip(pads, volume.shape[1:]))
    return logits[(slice(None),) + crop]


def tile_dependent(tiles):
    """A per-tile function whose output depends on the whole tile (its mean) and on position."""
    b, c = tiles.shape[:2]
    ramp = np.linspace(-1, 1, tiles.shape[2])[None, None, :, None, None]
    m = tiles.mean(axis=(1, 2, 3, 4), keepdims=True)
    return np.concatenate([tiles[:, :1] + m + ramp, -tiles[:, 1:2] - m], axis=1).astype(np.float32)


@pytest.mark.parametrize("shape,patch,step", [((2, 40, 37, 29), (16, 16, 16), 0.5), ((2, 10, 50, 12), (16, 24, 16), 0.5),
                                               ((2, 33, 33, 33), (32, 16, 20), 0.3)])
def test_sliding_window_matches_reference(shape, patch, step, rng):
    volume = rng.normal(size=shape).astype(np.float32)
    labels, logits = patches.sliding_window(volume, tile_dependent, patch, 2, step=step, batch_size=3,
                                            return_logits=True)
    ref = reference_stitch(volume.astype(np.float64), tile_dependent, patch, 2, step)
    assert logits.shape == (2,) + shape[1:] and labels.shape == shape[1:] and labels.dtype == np.uint8
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=0))


def test_pointwise_predictor_is_reproduced_exactly(rng):
    volume = rng.normal(size=(1, 30, 31, 32)).astype(np.float32)
    labels, logits = patches.sliding_window(volume, lambda t: t * 2, (16, 16, 16), 1, return_logits=True)
    np.testing.assert_allclose(logits[0], 2 * volume[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, (volume[0] > 0).astype(np.uint8))  # one channel: logit > 0


def test_accumulate_is_deterministic_across_threads(rng):
    volume = rng.normal(size=(2, 30, 30, 30)).astype(np.float32)
    out = []
    for threads in (1, 2):
        petfast.set_num_threads(threads)
        out.append(patches.sliding_window(volume, tile_dependent, (16, 16, 16), 2, return_logits=True)[1])
    petfast.set_num_threads(2)
    np.testing.assert_array_equal(out[0], out[1])


def test_torch_cpu(rng):
    torch = pytest.importorskip("torch")
    volume = rng.normal(size=(2, 20, 21, 22)).astype(np.float32)
    t_labels = patches.sliding_window(torch.from_numpy(volume), lambda t: torch.from_numpy(tile_dependent(t.numpy())),
                                      (16, 16, 16), 2)
    np.testing.assert_array_equal(t_labels.numpy(), patches.sliding_window(volume, tile_dependent, (16, 16, 16), 2))


def test_bad_input(rng):
    volume = np.zeros((1, 10, 10, 10), np.float32)
    with pytest.raises(ValueError, match="channel-first"):
        patches.gather_tiles(np.zeros((10, 10, 10)), [(0, 0, 0)], (4, 4, 4))
    with pytest.raises(ValueError, match="3 positive"):
        patches.tile_steps((10, 10, 10), (4, 0, 4))
    with pytest.raises(ValueError, match="image_shape must be 3 positive"):
        patches.tile_steps((10, 10, -1), (4, 4, 4))
    with pytest.raises(ValueError, match="step"):
        patches.tile_steps((10, 10, 10), (4, 4, 4), step=0)
    with pytest.raises(ValueError, match="outside"):
        patches.accumulate_tiles(np.zeros((1, 10, 10, 10), np.float32), np.zeros((10, 10, 10), np.float32),
                                 np.zeros((1, 1, 4, 4, 4), np.float32), [(8, 0, 0)], np.ones((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="predict returned"):
        patches.sliding_window(volume, lambda t: t[:, :, :2], (4, 4, 4), 1)
    with pytest.raises(TypeError, match="float32"):
        patches.gather_tiles(volume, [(0, 0, 0)], (4, 4, 4), dtype=np.int16)
    with pytest.raises(ValueError, match="whole numbers"):  # a fraction is not truncated to some tile
        patches.gather_tiles(volume, np.array([(0, 2.5, 0)]), (4, 4, 4))
    with pytest.raises(ValueError, match="3 axes"):
        patches.gather_tiles(volume, [(0, 0)], (4, 4, 4))
    assert (patches.gather_tiles(volume + 1, np.array([(-2.0, 0, 0)]), (4, 4, 4))[0, 0, :2] == 0).all()  # whole floats do
    with pytest.raises(ValueError, match="positive"):
        patches.gaussian_importance_map((4, 4, 4), sigma_scale=0)
    with pytest.raises(ValueError, match="share batch and patch size"):
        patches.augment(np.zeros((1, 2, 8, 8, 8), np.float32), np.zeros((1, 1, 8, 4, 8), np.int16), rng)


@pytest.mark.parametrize("bad,error,match", [
    ("read-only", ValueError, "read-only"),  # results would go into a frozen array
    ("broadcast", ValueError, "broadcast view"),  # every write would land on one element
    ("byte-swapped", TypeError, "native byte order"),  # results would go into a hidden copy
])
def test_accumulators_are_written_in_place_or_refused(bad, error, match):
    acc, weight = np.zeros((1, 10, 10, 10), np.float32), np.zeros((10, 10, 10), np.float32)
    if bad == "read-only":
        acc.flags.writeable = False
    elif bad == "broadcast":
        weight = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (10, 10, 10), (0, 0, 0))  # writable
    else:
        acc = acc.astype(">f4")
    with pytest.raises(error, match=match):
        patches.accumulate_tiles(acc, weight, np.ones((1, 1, 4, 4, 4), np.float32), [(0, 0, 0)],
                                 np.ones((4, 4, 4), np.float32))


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    torch = pytest.importorskip("torch")
    volume = rng.normal(size=(2, 40, 37, 29)).astype(np.float32)
    cpu_labels, cpu_logits = patches.sliding_window(volume, tile_dependent, (16, 16, 16), 2, return_logits=True)

    def predict(t):
        return torch.from_numpy(tile_dependent(t.cpu().numpy())).cuda()

    gpu_labels, gpu_logits = patches.sliding_window(torch.from_numpy(volume).cuda(), predict, (16, 16, 16), 2,
                                                    return_logits=True)
    np.testing.assert_allclose(gpu_logits.cpu().numpy(), cpu_logits, rtol=1e-5, atol=1e-5)
    assert (gpu_labels.cpu().numpy() != cpu_labels).mean() < 1e-4  # ties may break differently after atomics
    tiles = patches.gather_tiles(torch.from_numpy(volume).cuda(), [(-3, 2, 5), (30, 30, 20)], (16, 16, 16), pad=-1)
    np.testing.assert_array_equal(tiles.cpu().numpy(),
                                  patches.gather_tiles(volume, [(-3, 2, 5), (30, 30, 20)], (16, 16, 16), pad=-1))


# --- training patches ---------------------------------------------------------------------------

def lesion_case(rng, shape=(40, 50, 60)):
    image = rng.normal(size=(2,) + shape).astype(np.float32) + 5  # never 0, so padding shows
    label = np.zeros(shape, np.uint8)
    label[30:33, 40:44, 50:52] = 1  # a small lesion near a corner
    label[5:9, 5:7, 5:6] = 2
    return image, label


def test_class_locations_match_nnunet(rng):
    pre = pytest.importorskip("nnunetv2.preprocessing.preprocessors.default_preprocessor")
    label = np.zeros((50, 60, 70), np.int16)
    label[5:40, 5:50, 5:60] = 1  # 55k voxels: 10 000 sampled
    label[41:45, 51:55, 61:65] = 2
    label[0, 0, 0] = 3
    ref = pre.DefaultPreprocessor._sample_foreground_locations(label[None], [1, 2, 3], seed=1234)
    got = patches.class_locations(label)
    assert sorted(got) == [1, 2, 3] and len(got[1]) == 10000
    for c in got:
        np.testing.assert_array_equal(got[c], np.asarray(ref[c])[:, 1:])
    big = np.ones((120, 120, 120), np.uint8)  # 1.7 M voxels: 1 % coverage beats 10 000
    assert len(patches.class_locations(big)[1]) == int(np.ceil(big.size * 0.01))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 8, 12])
def test_oversampling_positions_match_nnunet(batch_size, rng):
    s = patches.PatchSampler([lesion_case(rng)], (8, 8, 8), batch_size=batch_size)
    expected = [not j < round(batch_size * (1 - 0.33)) for j in range(batch_size)]
    assert [s.force_foreground(j) for j in range(batch_size)] == expected


def test_foreground_fraction_over_many_draws(rng):
    image, label = lesion_case(rng)
    s = patches.PatchSampler([(image, label)], (12, 12, 12), batch_size=3, oversample_foreground=0.33, seed=5)
    forced_with_fg, other_with_fg, n = 0, 0, 200
    for _ in range(n):
        _, y = next(s)
        has_fg = (y > 0).reshape(3, -1).any(axis=1)
        forced_with_fg += has_fg[2]
        other_with_fg += has_fg[:2].sum()
    assert forced_with_fg == n  # every forced patch holds its lesion voxel
    assert other_with_fg / (2 * n) < 0.5  # random patches rarely meet two small lesions


def test_patches_pad_past_the_border(rng):
    image, label = lesion_case(rng, shape=(10, 12, 14))
    s = patches.PatchSampler([(image, label)], (16, 16, 16), batch_size=4, seed=2)
    x, y = next(s)
    assert x.shape == (4, 2, 16, 16, 16) and y.dtype == np.int16
    assert np.all((x == 0) == (y == -1)[:, [0, 0]])  # image pad 0 exactly where the label pads -1
    assert (y == -1).any() and (y >= 0).any()


def test_sampler_is_deterministic_and_fair_across_cases(rng):
    cases = [lesion_case(rng), lesion_case(rng, shape=(30, 30, 30))]
    a = patches.PatchSampler(cases, (8, 8, 8), batch_size=2, seed=9)
    b = patches.PatchSampler(cases, (8, 8, 8), batch_size=2, seed=9)
    for _ in range(5):
        xa, ya = next(a)
        xb, yb = next(b)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_case_without_foreground_falls_back_to_random(rng):
    image = rng.normal(size=(1, 20, 20, 20)).astype(np.float32)
    s = patches.PatchSampler([(image, np.zeros((20, 20, 20), np.uint8))], (8, 8, 8), batch_size=3)
    x, y = next(s)
    assert x.shape == (3, 1, 8, 8, 8) and not (y > 0).any()


def test_sampler_bad_input(rng):
    image, label = lesion_case(rng)
    with pytest.raises(ValueError, match="at least one"):
        patches.PatchSampler([], (8, 8, 8))
    with pytest.raises(ValueError, match="differs"):
        patches.PatchSampler([(image, label[:-1])], (8, 8, 8))
    with pytest.raises(TypeError, match="integers"):
        patches.PatchSampler([(image, label.astype(np.float32))], (8, 8, 8))
    with pytest.raises(ValueError, match="channel-first"):
        patches.PatchSampler([(image[0], label)], (8, 8, 8))
    with pytest.raises(ValueError, match="oversample"):
        patches.PatchSampler([(image, label)], (8, 8, 8), oversample_foreground=1.5)


def test_sampler_torch(rng):
    torch = pytest.importorskip("torch")
    image, label = lesion_case(rng)
    s = patches.PatchSampler([(torch.from_numpy(image), torch.from_numpy(label))], (8, 8, 8), batch_size=2, seed=3)
    x, y = next(s)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and y.dtype == torch.int16
    n = patches.PatchSampler([(image, label)], (8, 8, 8), batch_size=2, seed=3)
    xn, yn = next(n)
    np.testing.assert_array_equal(x.numpy(), xn)


def test_augment_mirrors_image_and_label_together(rng):
    image, label = lesion_case(rng)
    s = patches.PatchSampler([(image, label)], (12, 12, 12), batch_size=4, seed=1)
    x, y = next(s)
    x0, y0 = x.copy(), y.copy()
    xa, ya = patches.augment(x, y, np.random.default_rng(0), p_brightness=0, p_contrast=0, p_noise=0)
    for j in range(4):  # each sample is some flip of the original, the same for image and label
        found = False
        for flips in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]:
            if np.array_equal(xa[j], np.flip(x0[j], flips)):
                assert np.array_equal(ya[j], np.flip(y0[j], flips))
                found = True
        assert found


def test_augment_intensity_is_seeded_and_bounded(rng):
    x = rng.normal(size=(6, 1, 8, 8, 8)).astype(np.float32)
    y = np.zeros((6, 1, 8, 8, 8), np.int16)
    a, _ = patches.augment(x.copy(), y.copy(), np.random.default_rng(3), mirror_axes=(), p_brightness=1, p_contrast=1,
                           p_noise=0)
    b, _ = patches.augment(x.copy(), y.copy(), np.random.default_rng(3), mirror_axes=(), p_brightness=1, p_contrast=1,
                           p_noise=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)
    ratio = np.abs(a).max() / np.abs(x).max()
    assert 0.5 < ratio < 1.6


def test_sampler_in_a_torch_dataloader(rng):
    torch = pytest.importorskip("torch")
    image, label = lesion_case(rng)
    sampler = patches.PatchSampler([(image, label)], (8, 8, 8), batch_size=2, seed=4)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(sampler.torch_dataset(), batch_size=None, num_workers=workers)
        batches = [b for _, b in zip(range(4), loader)]
        assert all(x.shape == (2, 2, 8, 8, 8) and y.dtype == torch.int16 for x, y in batches)
        if workers == 2:  # workers draw different patches
            assert not torch.equal(batches[0][0], batches[1][0])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_cuda_gather_every_case_matches_cpu(dtype, rng):
    """Tiles inside, across each border, larger than the volume and wholly outside; float32 tiles and
    tiles of the volume's dtype; a strided (channel-sliced) volume."""
    torch = pytest.importorskip("torch")
    volume = (rng.normal(size=(3, 33, 40, 27)) * 50).astype(dtype)
    origins = [(0, 0, 0), (-5, 30, 20), (20, -7, -3), (-10, -10, -10), (40, 50, 30), (5, 6, 7)]
    for out_dtype in (np.float32, dtype):
        for step in (1, 2):
            cpu = patches.gather_tiles(volume[::step], origins, (24, 17, 40), pad=-3, dtype=out_dtype)
            gpu = patches.gather_tiles(torch.from_numpy(volume).cuda()[::step], origins, (24, 17, 40), pad=-3,
                                       dtype=out_dtype)
            assert gpu.is_cuda and gpu.dtype == torch.from_numpy(cpu).dtype
            np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("channels", [1, 3])
def test_cuda_accumulate_and_finalize_match_cpu(channels, rng):
    torch = pytest.importorskip("torch")
    shape, patch = (channels, 50, 61, 47), (32, 32, 32)
    origins = patches.tile_origins(shape[1:], patch, 0.5)
    tiles = rng.normal(size=(len(origins), channels) + patch).astype(np.float32)
    g = patches.gaussian_importance_map(patch)
    acc, weight = np.zeros(shape, np.float32), np.zeros(shape[1:], np.float32)
    patches.accumulate_tiles(acc, weight, tiles, origins, g)
    acc_g, weight_g = torch.zeros(shape, device="cuda"), torch.zeros(shape[1:], device="cuda")
    patches.accumulate_tiles(acc_g, weight_g, torch.from_numpy(tiles).cuda(), origins, torch.from_numpy(g).cuda())
    np.testing.assert_allclose(acc_g.cpu().numpy(), acc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weight_g.cpu().numpy(), weight, rtol=1e-6)
    acc /= weight
    acc_g /= weight_g
    labels, labels_g = patches.finalize(acc), patches.finalize(acc_g)
    assert labels_g.is_cuda and labels_g.dtype == torch.uint8
    assert (labels_g.cpu().numpy() != labels).mean() < 1e-4
