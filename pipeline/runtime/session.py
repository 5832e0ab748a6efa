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
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"runtime_env": RUNTIME_ENV, "logging_level": logging.WARNING}
    log.info("starting Ray (%s)", address or "embedded local")
    ray.init(address=address, **kwargs)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
