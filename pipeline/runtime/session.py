"""Connecting to Ray: embedded local Ray, or the cluster named by --address / RAY_ADDRESS."""

from __future__ import annotations

import logging
import os
import sys

from pipeline.models.keras import KERAS_ENV, VERBOSE_ENV, select_legacy_keras

log = logging.getLogger(__name__)

# Ray Train's controller polls its workers this often (Ray's default: 2 s), and notices a
# finished run only at its next poll: 0.5 s took ~2 s off every train run (29.8 -> 27.3 s for
# one dnn epoch on 2 CPUs, mean of 4), for a poll per worker 4 times a second.
TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
# Passed on from the driver when set there: whether TensorFlow uses oneDNN's custom ops (its
# default depends on the CPU), so every worker takes the path the driver was told to take; the
# URI schemes songs may name (--allow-http); Ray Train's poll.
PASSED_ON = ("TF_ENABLE_ONEDNN_OPTS", "GENRES_URI_SCHEMES", "GENRES_SONG_LIMITS",
             "GENRES_FAULTS", "TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV, TRAIN_POLL_ENV)


def runtime_env() -> dict:
    """What every Ray worker, Train worker and Data actor must see before TensorFlow loads:
    the job's runtime env on a cluster (embedded Ray's workers inherit the driver's env)."""
    env = {key: os.environ.get(key, value) for key, value in KERAS_ENV.items()}
    return {"env_vars": {**env, **{key: os.environ[key] for key in PASSED_ON if key in os.environ}}}


def verbose() -> bool:
    """Whether the command was asked for its libraries' logs (``--verbose``)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries() -> None:
    """A command prints its own progress and summary; its libraries' logs stay off unless
    ``--verbose`` asks for them: Ray Data's plans (RAY_DATA_LOG_LEVEL, read when ray.data is
    first imported) and TensorFlow's Python-side C++ log level. The rest is set where Ray
    starts (:func:`init_ray`). What the user set wins."""
    loud = verbose()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if loud else "3")
    # ERROR: its warnings are about its own machinery ("Progress bars disabled", operator
    # backpressure); a failure raises
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "INFO" if loud else "ERROR")
    # TensorFlow's Python logger ("Assets written to ..." when a model is saved)
    logging.getLogger("tensorflow").setLevel(logging.INFO if loud else logging.WARNING)


def init_ray(address: str | None = None) -> None:
    """Start or join Ray once per process, with the project's runtime env everywhere."""
    import ray

    if ray.is_initialized():
        return
    select_legacy_keras()
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    # "local" forces a new embedded instance: a bare ray.init() would join the last cluster
    # `ray start` launched on this machine, even a dead one whose record was left behind.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # Quiet unless --verbose: the workers' and actors' own output (TensorFlow's C++ notes in
    # each Train worker, Ray Train's controller lines, Ray Data's coordinators) stays in the
    # session's log files instead of being forwarded to this terminal; a failure in them
    # still raises here with its traceback. Ray's own start-up warnings likewise.
    kwargs = {"logging_level": logging.INFO if verbose() else logging.ERROR,
              "log_to_driver": verbose()}
    if address != "local":  # a cluster's workers get the env from the job, merged with this
        kwargs["runtime_env"] = runtime_env()
    # Embedded Ray's workers inherit the env select_legacy_keras() just set, so no runtime env:
    # only tasks and actors without one can take the workers Ray prestarts (Ray #47212). With
    # one, each waited for a new process: scoring actors were ready 6.5-9.5 s into a run on
    # 2 CPUs, without it 3-4 s.
    log.info("starting Ray (%s)", "embedded local" if address == "local" else address)
    # Ray Data logs every dataset's plan and progress at INFO; the commands report their own.
    # Read when ray.data is first imported (RAY_DATA_LOG_LEVEL=INFO brings them back).
    quiet_libraries()
    if "ray.data" in sys.modules:
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    from ray.data import DataContext

    # progress bars drawn by Ray Data, here and in Ray Train's dataset coordinators (they
    # take this context); the commands log their own progress
    DataContext.get_current().enable_progress_bars = verbose()
    ray.init(address=address, **kwargs)

