"""Ray Train worker faults: a killed worker restarts the group from the last checkpoint."""

import glob
import os
import signal
import threading
import time

import pandas as pd
import pytest

from corpus import current, tiny_features
from pipeline.runtime.train import TrainConfig, run_train

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _train_workers() -> list[int]:
    import ray
    from ray.util.state import list_actors

    # this session's Ray by its address: other Rays may run on the machine (scripts/test.sh
    # runs the cluster tests beside this one)
    return [a.pid for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                       filters=[("class_name", "=", "RayTrainWorker"),
                                                ("state", "=", "ALIVE")])]


def test_a_killed_train_worker_resumes_from_the_checkpoint(ray_session, tmp_path):
    songs = [{"song_id": f"s{i:02d}", "seconds": 4.2, "label": "ab"[i % 2],
              "split": "valid" if i % 5 == 0 else "train"} for i in range(40)]
    features = tiny_features(tmp_path, songs)
    runs = str(tmp_path / "runs")
    outcome = {}

    def train():
        try:
            outcome["summary"] = run_train(
                features, str(tmp_path / "model"),
                TrainConfig(model="cnn2d", num_workers=2, epochs=4, batch_size=8, patience=10),
                storage_path=runs)
        except Exception as e:  # reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 600
    # Ray Train has registered epoch 1's checkpoint (not just written its files)
    while not glob.glob(os.path.join(runs, "*", "checkpoint_manager_snapshot.json")):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    victims = _train_workers()
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)  # not gracefully: as a lost node would
    thread.join(timeout=900)
    assert not thread.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    # Ray Train restarted the worker group, which went on from the last checkpoint
    assert summary["metrics"]["workers"]["resumed"] >= 1
    # every epoch once: the ones before the kill come from the checkpoint, not trained again
    assert list(pd.read_csv(current(tmp_path / "model") / "history.csv").epoch) == [1, 2, 3, 4]
