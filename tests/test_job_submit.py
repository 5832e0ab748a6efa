"""`ray job submit -- python -m jobs.extract ...` against a real Ray head with a dashboard."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port(low=20000, high=29999):
    """A free port outside Ray's default worker range (10002-19999)."""
    for port in np.random.default_rng().integers(low, high, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", int(port)))
                return int(port)
            except OSError:
                continue
    raise RuntimeError("no free port")


@pytest.fixture
def ray_head():
    # The head's PATH starts with this venv: job entrypoints run `python` from it.
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "disabled", "TF_USE_LEGACY_KERAS": "1"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, agent, client = (_free_port() for _ in range(4))
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit
    head = subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={gcs}", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         f"--ray-client-server-port={client}", "--num-cpus=2", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # the dashboard answers some seconds after start
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
                break
            except OSError:
                time.sleep(1)
        yield address, env
    finally:
        # gcs_server survives a SIGTERM of `ray start --block`: end the whole process group
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_extract_job_under_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    rng = np.random.default_rng(5)
    catalog = tmp_path / "songs"
    catalog.mkdir()
    for i in range(3):
        sf.write(catalog / f"s{i}.wav", (0.1 * rng.standard_normal(6 * 22050)).astype(np.float32),
                 22050)
    (catalog / "bad.wav").write_bytes(b"not audio")
    out = tmp_path / "features"
    command = [str(pathlib.Path(sys.executable).parent / "ray"), "job", "submit",
               "--address", address, "--working-dir", str(ROOT), "--submission-id",
               f"genres-test-{os.getpid()}", "--", "python", "-m", "jobs.extract", str(catalog),
               "--out", str(out)]
    deadline = time.time() + 120
    while True:  # the job agent needs a few seconds after the head is up
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0 or time.time() > deadline or \
                "No available agent" not in result.stdout + result.stderr:
            break
        time.sleep(3)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    assert pd.read_parquet(out, columns=["song_id"]).song_id.nunique() == 3
    from pipeline.storage.shards import FeatureStore

    errors = FeatureStore(str(out)).read_errors()
    assert errors.column("song_id").to_pylist() == ["bad"]
    # the schedule's guard: the same submission id again is refused, nothing runs twice
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stdout + again.stderr, \
        (again.stdout + again.stderr)[-2000:]
