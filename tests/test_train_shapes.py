"""Uneven shapes in 2-worker training, with oneDNN's custom ops on (as on servers) and off.

TensorFlow's oneDNN Conv2D answers an empty batch with a tensor of its *input's* shape, so a
replica that ever gets an empty batch fails ("input depth must be evenly divisible by filter
depth: 1 vs 16"). Keras under MultiWorkerMirroredStrategy made one whenever a worker's last
partial batch held fewer frames than there are workers; these shapes are the demo's kind.
"""

import pytest

from corpus import tiny_features
from pipeline.errors import ParameterError
from pipeline.runtime.train import TrainConfig, run_train
from pipeline.runtime.train_worker import worker_feed


@pytest.mark.parametrize("rows, workers, batch, drop_last, expected", [
    (18, 2, 8, False, (4, 3)),   # the demo's validation: 9 frames a worker -> 4, 4, 1
    (3, 2, 8, False, (4, 1)),    # one frame a worker (Ray drops the odd one to keep it equal)
    (27, 2, 8, True, (4, 3)),    # training drops a worker's last partial batch: 13 -> 4, 4, 4
    (10, 3, 8, True, (3, 1)),    # a global batch of 8 over 3 workers: 3 a worker
    (5, 1, 16, False, (16, 1)),
])
def test_worker_feed_gives_every_worker_the_same_non_empty_batches(rows, workers, batch,
                                                                   drop_last, expected):
    feed = worker_feed(rows, workers, batch, drop_last=drop_last, split="valid", unit="frames")
    assert (feed.batch, feed.steps) == expected


@pytest.mark.parametrize("rows, workers, drop_last, needle", [
    (1, 2, False, "the valid split has 1 frames, fewer than the 2 workers"),
    (7, 2, True, "the train split has 7 frames: 2 workers x 4 a batch need at least 8"),
])
def test_splits_too_small_for_the_workers_are_refused_with_the_fix(rows, workers, drop_last,
                                                                   needle):
    split = "train" if drop_last else "valid"
    with pytest.raises(ParameterError, match=needle):
        worker_feed(rows, workers, 8, drop_last=drop_last, split=split, unit="frames")


@pytest.fixture(scope="module")
def uneven_features(tmp_path_factory):
    """1 s frames: 27 train frames (13 a worker), 3 valid (1 a worker), 3 test, 3 labels."""
    songs = [{"song_id": f"{label}/{split}{i}", "seconds": seconds, "label": label, "split": split}
             for label in "abc"
             for split, n, seconds in (("train", 3, 3.2), ("valid", 1, 1.2), ("test", 1, 1.2))
             for i in range(n)]
    return tiny_features(tmp_path_factory.mktemp("uneven"), songs)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("model, onednn, cached", [("cnn2d", "1", True), ("cnn2d", "0", False),
                                                   ("mil", "1", False)])
def test_two_workers_train_on_uneven_shards(ray_session, uneven_features, tmp_path, monkeypatch,
                                            model, onednn, cached):
    from pipeline.runtime import train

    # the driver's setting reaches the Train workers through their runtime env
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    # frames read once into the object store, or streamed from the parts every epoch
    monkeypatch.setattr(train, "_CACHE_BYTES", 2 ** 30 if cached else 0)
    summary = run_train(uneven_features, str(tmp_path / "model"),
                        TrainConfig(model=model, num_workers=2, epochs=2, batch_size=8,
                                    split="manifest"), storage_path=str(tmp_path / "runs"))
    workers = summary["metrics"]["workers"]
    assert workers["onednn_custom_ops"] == (onednn == "1")
    assert workers["count"] == 2 and workers["batch_per_worker"] == 4
    assert summary["epochs"] == 2 and summary["metrics"]["test"]["songs"] == 3
