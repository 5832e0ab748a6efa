"""Connecting to Ray: embedded local Ray, or the cluster named by --address / RAY_ADDRESS."""

from __future__ import annotations

import logging
import os

from pipeline.models.keras import KERAS_ENV, select_legacy_keras

log = logging.getLogger(__name__)

# Every Ray worker, Train worker and Data actor must see these before TensorFlow loads.
RUNTIME_ENV = {"env_vars": dict(KERAS_ENV)}


def init_ray(address: str | None = None) -> None:
    """Start or join Ray once per process, with the project's runtime env everywhere."""
    import ray

    if ray.is_initialized():
        return
    select_legacy_keras()
    # "local" forces a new embedded instance: a bare ray.init() would join the last cluster
    # `ray start` launched on this machine, even a dead one whose record was left behind.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = {"runtime_env": RUNTIME_ENV, "logging_level": logging.WARNING}
    log.info("starting Ray (%s)", "embedded local" if address == "local" else address)
    ray.init(address=address, **kwargs)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
