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


def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n 2`` (scripts/test.sh): each module runs whole, in order, in one worker
    (its module fixtures are set up once), and the modules that start Rays of their own run one
    after another in one worker, so two multi-node clusters never run at once. Their waits
    (jobs submitted, nodes launched and given back) overlap the other worker's tests on its own
    local Ray."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "own-rays" if pathlib.Path(module).stem in OWN_RAYS else module

    return ModulesApart(config, log)


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
