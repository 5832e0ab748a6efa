import os
import pathlib

import numpy as np
import pytest

# The project's Keras flavour must be chosen before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


# modules whose tests start Rays of their own: multi-node clusters, `genres` in subprocesses
OWN_RAYS = ("test_autoscaling", "test_cluster", "test_faults", "test_output")


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n 2 --dist loadgroup`` (scripts/test.sh) every test is in one of two
    groups, each run whole by one worker: the tests that start Rays of their own, and the
    rest, on the session's local Ray (:func:`ray_session`). The first group's waits (jobs
    submitted, nodes launched and given back) overlap the second's work; each worker holds one
    group's module fixtures from its first test to its last."""
    for item in items:
        own = item.module.__name__ in OWN_RAYS
        item.add_marker(pytest.mark.xdist_group("own-rays" if own else "session-ray"))


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (real GTZAN audio); tests that need it skip cleanly when absent."""
    if not (SHARED / "gtzan3" / "manifest.csv").exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test run (start-up costs ~12 s)."""
    import ray

    from pipeline.runtime.session import init_ray

    init_ray(None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server for a module of cluster tests; this process reads what jobs wrote."""
    from servers import MotoServer

    server = MotoServer()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env.items():
            patch.setenv(key, value)
        yield server
    server.stop()
