"""Connecting to Ray: embedded local Ray, or the cluster named by --address / RAY_ADDRESS."""

from __future__ import annotations

import logging
import os
import sys

from pipeline.models.keras import KERAS_ENV, select_legacy_keras

log = logging.getLogger(__name__)

# Passed on from the driver when set there: whether TensorFlow uses oneDNN's custom ops (its
# default depends on the CPU), so every worker takes the path the driver was told to take; the
# URI schemes songs may name (--allow-http).
PASSED_ON = ("TF_ENABLE_ONEDNN_OPTS", "GENRES_URI_SCHEMES", "GENRES_SONG_LIMITS",
             "GENRES_FAULTS")


def runtime_env() -> dict:
    """What every Ray worker, Train worker and Data actor must see before TensorFlow loads:
    the job's runtime env on a cluster (embedded Ray's workers inherit the driver's env)."""
    env = {key: os.environ.get(key, value) for key, value in KERAS_ENV.items()}
    return {"env_vars": {**env, **{key: os.environ[key] for key in PASSED_ON if key in os.environ}}}


def init_ray(address: str | None = None) -> None:
    """Start or join Ray once per process, with the project's runtime env everywhere."""
    import ray

    if ray.is_initialized():
        return
    select_legacy_keras()
    # "local" forces a new embedded instance: a bare ray.init() would join the last cluster
    # `ray start` launched on this machine, even a dead one whose record was left behind.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = {"logging_level": logging.WARNING}
    if address != "local":  # a cluster's workers get the env from the job, merged with this
        kwargs["runtime_env"] = runtime_env()
    # Embedded Ray's workers inherit the env select_legacy_keras() just set, so no runtime env:
    # only tasks and actors without one can take the workers Ray prestarts (Ray #47212). With
    # one, each waited for a new process: scoring actors were ready 6.5-9.5 s into a run on
    # 2 CPUs, without it 3-4 s.
    log.info("starting Ray (%s)", "embedded local" if address == "local" else address)
    # Ray Data logs every dataset's plan and progress at INFO; the commands report their own.
    # Read when ray.data is first imported (RAY_DATA_LOG_LEVEL=INFO brings them back).
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    if "ray.data" in sys.modules:
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    ray.init(address=address, **kwargs)

