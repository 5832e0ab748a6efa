"""What the cluster tests share: a catalog of real songs in moto's bucket, `ray job submit`
jobs, and polling with a deadline."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from servers import MotoServer, RayCluster

GENRES = ("classical", "jazz", "rock")


def upload_catalog(s3: MotoServer, shared_data, *, per_genre: int, bucket: str = "music") -> dict:
    """``per_genre`` GTZAN songs of each genre, one undecodable file and one missing file, in
    ``bucket``; the manifest names them by s3:// URI."""
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    rows = []
    for genre in GENRES:
        for i in range(per_genre):
            name = f"{genre}/{genre}.{i:05d}.ogg"
            client.upload_file(str(shared_data / "gtzan3" / name), bucket, f"songs/{name}")
            rows.append((f"s3://{bucket}/songs/{name}", genre))
    client.upload_file(str(shared_data / "bad" / "jazz.00054.headerless.wav"), bucket,
                       "songs/jazz/headerless.wav")
    rows += [(f"s3://{bucket}/songs/jazz/headerless.wav", "jazz"),
             (f"s3://{bucket}/songs/rock/gone.ogg", "rock")]
    manifest = pd.DataFrame(rows, columns=["uri", "label"]).to_csv(index=False)
    client.put_object(Bucket=bucket, Key="catalog.csv", Body=manifest.encode())
    return {"manifest": f"s3://{bucket}/catalog.csv", "songs": len(rows),
            "ok": len(GENRES) * per_genre,
            "errors": {"headerless": "decode", "gone": "missing"}}


class Job:
    """A submitted job: `ray job submit` runs until the job ends and prints its logs."""

    count = 0

    def __init__(self, cluster: RayCluster, s3: MotoServer, stage: str, *args: str,
                 submission_id: str | None = None):
        Job.count += 1
        self.cluster, self.started = cluster, time.monotonic()
        self.id = submission_id or f"genres-{stage}-{os.getpid()}-{Job.count}"
        self.process = cluster.submit(f"jobs.{stage}", list(args), env_vars=s3.env,
                                      submission_id=self.id)

    def wait(self, timeout: float = 600) -> str:
        self.output, _ = self.process.communicate(timeout=timeout)
        self.seconds = time.monotonic() - self.started
        return self.output

    def succeeded(self) -> str:
        output = self.wait()
        assert self.process.returncode == 0 and "succeeded" in output, output[-12000:]
        return output

    def actors(self, class_fragment: str) -> list[dict]:
        """The job's actors (alive or dead) whose class name has ``class_fragment``."""
        return [a for a in self.cluster.actors(self.cluster.job_id(self.id))
                if class_fragment in a["class_name"]]


def until(found, what: str, timeout: float = 300, job: Job | None = None):
    """Poll ``found()`` until it returns something true; fail if ``job`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if job is not None and job.process.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{job.wait()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"no {what} after {timeout} s")
