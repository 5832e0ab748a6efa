import numpy as np
import pytest

from pipeline.errors import ParameterError
from pipeline.evaluate import (calibrate, calibration_error, evaluate, fit_temperature,
                               with_temperature)
from pipeline.storage.bundle import Bundle
from pipeline.models.aggregate import aggregate, decide

CLASSES = ["blues", "jazz", "metal", "rock"]
PROBS = np.array([[.5, .2, .3, .9], [.9, .2, .3, .3], [.5, .2, .3, .7], [.1, .2, .3, .5],
                  [.9, .2, .3, .4]])


def test_majority_votes_rock():
    votes = aggregate(PROBS, "majority")
    np.testing.assert_allclose(votes, [.4, 0, 0, .6])
    assert CLASSES[decide(votes, PROBS)] == "rock"


def test_mean_picks_blues():
    mean = aggregate(PROBS, "mean")
    np.testing.assert_allclose(mean, [.58, .2, .3, .56])
    assert CLASSES[decide(mean, PROBS)] == "blues"


def test_logodds_averages_over_frames_per_class():
    lo = aggregate(PROBS, "logodds")
    assert lo.shape == (4,)
    logit = np.log(PROBS / (1 - PROBS))
    np.testing.assert_allclose(lo, 1 / (1 + np.exp(-logit.mean(axis=0))))
    # blues: mean logit (0 + 2.197 + 0 - 2.197 + 2.197) / 5 = 0.439 -> 0.608;
    # rock: (2.197 - 0.847 + 0.847 + 0 - 0.405) / 5 = 0.358 -> 0.589; constant columns stay put
    np.testing.assert_allclose(lo, [.6082, .2, .3, .5886], atol=1e-4)
    assert CLASSES[decide(lo, PROBS)] == "blues"


def test_unknown_aggregator_and_empty_song_are_refused():
    with pytest.raises(ParameterError, match="unknown aggregator"):
        aggregate(PROBS, "median")
    with pytest.raises(ParameterError):
        aggregate(np.zeros((0, 4)), "mean")


def test_evaluate_counts_songs_and_frames():
    song_ids = np.array(["a"] * 5 + ["b"] * 2)
    probs = np.vstack([PROBS, [[.1, .1, .1, .7], [.1, .1, .1, .7]]])
    y = np.array([0] * 5 + [3] * 2)
    result = evaluate(probs, y, song_ids, CLASSES)
    assert result["songs"] == 2 and result["frames"] == 7
    assert result["song_accuracy"]["mean"] == 1.0  # a -> blues, b -> rock
    assert result["song_accuracy"]["majority"] == 0.5  # a -> rock by votes
    assert np.array(result["confusion"]["mean"]).sum() == 2


def test_sequence_inputs_are_padded_log_odds():
    from pipeline.models.sequence import frame_logodds, pad_sequences

    songs = [np.array([[0.5, 0.5]]), np.array([[0.9, 0.1], [0.2, 0.8]])]
    x = pad_sequences([frame_logodds(p) for p in songs])
    assert x.shape == (2, 2, 2) and x.dtype == np.float32
    assert np.allclose(x[1, 0], [np.log(9), -np.log(9)], atol=1e-5)
    assert np.all(x[0, 1] == 0)  # padding: all zeros, masked by the GRU
    assert np.isfinite(frame_logodds(np.array([[1.0, 0.0]]))).all()


def test_bags_pad_with_the_songs_own_frames_and_mask_them():
    from pipeline.features.bags import make_bags

    x = np.arange(5, dtype=np.float32)[:, None] * np.ones((5, 3), np.float32)
    frames, mask, rows = make_bags(x, np.array(["a", "b", "a", "b", "b"]))
    assert frames.shape == (2, 3, 3) and mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert frames[0, :, 0].tolist() == [0, 2, 0]  # song a: frames 0, 2, then a repeat of 0
    assert frames[1, :, 0].tolist() == [1, 3, 4]
    assert [r.tolist() for r in rows] == [[0, 2], [1, 3, 4]]


def test_the_simplest_head_within_one_standard_error_of_the_best_is_kept():
    from pipeline.evaluate import simplest_within_one_se as choose

    # (validation song log-loss, its standard error), simplest head first
    assert choose({"pooled": (0.922, 0.197), "logistic": (1.049, 0.196),
                   "dense": (0.920, 0.220)}) == "pooled"  # level with the best: kept
    assert choose({"pooled": (0.30, 0.05), "logistic": (0.14, 0.04),
                   "dense": (0.16, 0.05)}) == "logistic"  # the best's error is 0.04: out
    assert choose({"pooled": (0.5, 0.1), "logistic": (0.2, 0.0), "dense": (0.2, 0.0)}) \
        == "logistic"  # no error: only equals stay
    assert choose({"dense": (1.0, 0.5)}) == "dense"


def test_song_log_loss_is_the_mean_cross_entropy_of_songs_mean_probabilities():
    from pipeline.evaluate import evaluate, merge_tallies, tally, tally_metrics

    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    y, songs = np.array([0, 0, 0, 0]), np.array(["a", "a", "b", "b"])
    losses = -np.log([0.7, 0.2])  # song a's mean is (0.7, 0.3), b's (0.2, 0.8)
    m = evaluate(probs, y, songs, ["x", "z"])
    assert m["song_log_loss"] == pytest.approx(losses.mean())
    assert m["song_log_loss_se"] == pytest.approx(losses.std(ddof=1) / np.sqrt(2))
    # a song-level model's songs, tallied in two blocks
    songs = np.array([[0.7, 0.3], [0.2, 0.8]])
    m = tally_metrics(merge_tallies(*[tally({"pooled": songs[[i]]}, np.array([0]),
                                            scored="pooled", temperature=1.0) for i in (0, 1)]),
                      ["x", "z"])
    assert m["song_log_loss"] == pytest.approx(losses.mean())
    assert m["song_log_loss_se"] == pytest.approx(losses.std(ddof=1) / np.sqrt(2))
    assert m["song_accuracy"] == {"pooled": 0.5} and m["frames"] is None


def _frames(rng, n_songs=40, n_classes=4):
    """Frame predictions of ``n_songs`` songs (1-8 frames each), rows shuffled."""
    ids, frame, y, probs = [], [], [], []
    for s in range(n_songs):
        k = int(rng.integers(1, 9))
        ids += [f"s{s:02d}"] * k
        frame += list(range(k))
        y += [int(rng.integers(n_classes))] * k
        probs.append(rng.dirichlet(np.full(n_classes, 0.7), size=k))
    order = rng.permutation(len(ids))
    return (np.array(ids, dtype=object)[order], np.array(frame)[order],
            np.concatenate(probs)[order], np.array(y)[order])


def test_song_sums_tallied_in_blocks_give_the_figures_of_the_frames_themselves(rng):
    from pipeline.evaluate import merge_tallies, song_scores, song_sums, tally, tally_metrics

    ids, frame, probs, y = _frames(rng)
    classes = list("abcd")
    sums = song_sums(ids, frame, probs, y)
    assert list(sums["song_id"]) == sorted(set(ids))
    merged = None
    for rows in np.array_split(np.arange(len(sums["y"])), 3):  # blocks of songs, as Ray's
        part = {k: np.asarray(v)[rows] for k, v in sums.items() if k != "logodds"}
        merged = merge_tallies(merged, tally(song_scores(part), part["y"], scored="mean",
                                             temperature=1.0, frames=part["frames"],
                                             correct=part["correct"]))
    # majority ties (few frames) are broken by the mean probability on both sides
    got, want = tally_metrics(merged, classes), evaluate(probs, y, ids, classes)
    assert {k: got[k] for k in ("song_accuracy", "confusion", "songs", "frames")} == \
        {k: want[k] for k in ("song_accuracy", "confusion", "songs", "frames")}
    for k in ("frame_accuracy", "song_log_loss", "song_log_loss_se"):
        assert got[k] == pytest.approx(want[k], rel=1e-9)
    # each song's log-odds in frame order, as the sequence aggregator reads them
    from pipeline.models.sequence import frame_logodds

    first = sums["song_id"][0]
    rows = np.flatnonzero(ids == first)
    np.testing.assert_array_equal(sums["logodds"][0],
                                  frame_logodds(probs[rows[np.argsort(frame[rows])]]))


@pytest.mark.slow
def test_the_numpy_gru_scores_as_the_keras_sequence_model(rng):
    from pipeline.models.sequence import (build_sequence, frame_logodds, gru_scores,
                                          pad_sequences, sequence_weights)

    model = build_sequence(3)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    songs = [frame_logodds(rng.dirichlet(np.ones(3), size=k)) for k in (1, 4, 9, 2)]
    np.testing.assert_allclose(gru_scores(sequence_weights(model), songs),
                               model.predict(pad_sequences(songs), verbose=0), atol=1e-5)


def _overconfident(rng, n=2000, classes=5):
    """Songs whose true probabilities are softmax(z) but reported as softmax(3 z): sure of
    themselves three times too much."""
    z = rng.normal(0, 1.0, (n, classes))
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in true])
    shown = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    return true, shown, y


def test_temperature_scaling_finds_the_overconfidence_and_keeps_every_argmax(rng):
    true, shown, y = _overconfident(rng)
    t = fit_temperature(shown, y)
    assert 2.5 < t < 3.5
    calibrated = with_temperature(shown, t)
    assert (calibrated.argmax(1) == shown.argmax(1)).all()
    np.testing.assert_allclose(calibrated.sum(1), 1.0, rtol=1e-6)
    assert calibration_error(shown, y) > 0.15
    assert calibration_error(calibrated, y) < 0.05
    assert abs(calibration_error(true, y) - calibration_error(calibrated, y)) < 0.03


def test_calibration_error_of_exact_and_of_always_wrong_confidences():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    assert calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(
        (2 * 0.1 + 2 * 0.4) / 4)  # bins: {0.9, 0.9} all right, {0.6, 0.6} all right
    assert calibration_error(probs, np.array([1, 1, 1, 0])) == pytest.approx(
        (2 * 0.9 + 2 * 0.6) / 4)
    assert calibration_error(np.zeros((0, 3)), np.zeros(0, int)) == 0.0
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_calibrate_fits_on_validation_songs_only_and_keeps_every_test_argmax(rng):
    _, shown, y = _overconfident(rng, n=600)
    valid, test = slice(0, 300), slice(300, 600)
    out = calibrate({"valid": (shown[valid], y[valid]), "test": (shown[test], y[test])}, "mean")
    assert out["aggregator"] == "mean" and out["songs"] == 300 and 2 < out["temperature"] < 4
    assert out["temperature"] == fit_temperature(shown[valid], y[valid])  # never the test songs
    figures = out["test"]
    assert figures["ece_after"] < 0.06 < 0.15 < figures["ece_before"]
    assert figures["log_loss_after"] < figures["log_loss_before"]
    assert sum(b["songs"] for b in figures["reliability_after"]) == 300
    # a bundle applies it to the aggregator it was fitted for, and to no other
    bundle = Bundle(root="", model_id="m", model="cnn2d", feature="logmel", classes=tuple("abcde"),
                    spec=None, mean=np.zeros(1), std=np.ones(1), calibrated="mean",
                    temperature=out["temperature"])
    calibrated = bundle.calibrate(shown[test], "mean")
    assert (calibrated.argmax(1) == shown[test].argmax(1)).all()
    np.testing.assert_allclose(calibrated, with_temperature(shown[test], out["temperature"]))
    kept = shown[test]
    assert bundle.calibrate(kept, "majority") is kept
    assert calibrate({}, "mean")["temperature"] == 1.0  # no validation songs: as they are
    few = calibrate({"valid": (shown[:29], y[:29]), "test": (shown[test], y[test])}, "mean")
    assert few["temperature"] == 1.0 and few["fitted_on"].startswith("none: fewer than 30")
    assert few["test"]["ece_after"] == few["test"]["ece_before"]
    # where cross-validation ran, on its out-of-fold songs (many), not the validation songs (few)
    cv = calibrate({"valid": (shown[:29], y[:29]), "cv": (shown[valid], y[valid]),
                    "test": (shown[test], y[test])}, "mean", fit_on="cv")
    assert cv["fitted_on"] == "cv" and cv["songs"] == 300
    assert cv["temperature"] == out["temperature"] and cv["test"] == figures
