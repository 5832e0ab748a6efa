"""Per-band statistics combined in parts equal numpy's over the whole table."""

import numpy as np
import pytest

from pipeline.features.bags import make_bags, pool_bags, song_bag
from pipeline.features.stats import BandStats


@pytest.mark.parametrize("shape", [(40, 8, 11), (40, 5)])
def test_parts_combine_to_the_numpy_reference(rng, shape):
    # float32 values far from zero: a float32 sum of squares loses them, Chan's update does not
    x = (1000 + rng.standard_normal(shape) * np.arange(1, shape[1] + 1).reshape(
        (1, -1) + (1,) * (len(shape) - 2))).astype(np.float32)
    axes = (0, *range(2, x.ndim))
    stats = BandStats.from_list([0.0])  # the empty accumulator Ray Data starts from
    for part in np.array_split(x, [3, 4, 17, 17, 30]):  # uneven parts, one of them empty
        stats = stats.combine(BandStats.from_list(BandStats.of(part).to_list()))
    assert stats.count == x.size // x.shape[1]
    assert np.allclose(stats.mean, x.astype(np.float64).mean(axis=axes), rtol=0, atol=1e-9)
    assert np.allclose(stats.std(), x.astype(np.float64).std(axis=axes), rtol=1e-9)


def test_constant_bands_are_left_unscaled():
    x = np.zeros((6, 3))
    x[:, 0] = np.arange(6)
    x[:, 2] = 0.25  # constant: dividing by its std (0) would blow up any other value
    stats = BandStats.of(x)
    assert np.allclose(stats.scale(), [x[:, 0].std(), 1, 1])


def test_a_bag_samples_long_songs_and_pads_short_ones(rng):
    frames = np.arange(10, dtype=np.float32)[:, None]
    bag, mask = song_bag(frames, 4)  # evenly spaced without a generator
    assert bag[:, 0].tolist() == [0, 3, 6, 9] and mask.tolist() == [1, 1, 1, 1]
    drawn = [tuple(song_bag(frames, 4, rng)[0][:, 0]) for _ in range(20)]
    assert all(list(d) == sorted(set(d)) for d in drawn) and len(set(drawn)) > 1  # anew, in order
    bag, mask = song_bag(frames[:3], 5)
    assert bag[:, 0].tolist() == [0, 1, 2, 0, 1] and mask.tolist() == [1, 1, 1, 0, 0]


def test_pooled_bags_are_the_mean_and_std_of_each_songs_real_frames(rng):
    x = rng.normal(size=(9, 4))
    songs = np.array(["a"] * 5 + ["b"] * 3 + ["c"])
    frames, mask, rows = make_bags(x, songs)  # padded with repeats to 5 frames
    pooled = pool_bags(frames, mask)
    for i, r in enumerate(rows):
        assert np.allclose(pooled[i], np.concatenate([x[r].mean(0), np.sqrt(x[r].var(0) + 1e-6)]))
