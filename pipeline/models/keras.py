"""The project's single Keras flavour: tf-keras (Keras 2) through ``tf.keras``.

Keras 3 cannot run under MultiWorkerMirroredStrategy inside Ray Train (TF 2.21 / Keras 3.15),
and checkpoints do not cross flavours, so every process that builds, trains or loads a model
goes through :func:`tf_keras`, which selects tf-keras before TensorFlow is first imported.
"""

from __future__ import annotations

import contextlib
import os
import sys

from pipeline.errors import GenresError

KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
VERBOSE_ENV = "GENRES_VERBOSE"  # "1": Ray's and TensorFlow's own logs and progress bars too


def select_legacy_keras() -> None:
    """Set the environment so a later ``import tensorflow`` picks tf-keras."""
    for key, value in KERAS_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ["TF_USE_LEGACY_KERAS"] != "1":
        raise GenresError("TF_USE_LEGACY_KERAS must be 1: genres models are tf-keras models")


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow runs oneDNN's custom ops (None if it cannot tell).

    TensorFlow turns them on by default on Linux only for CPUs with AVX512-VNNI/BF16, AVX-VNNI
    or AMX; ``TF_ENABLE_ONEDNN_OPTS=0|1`` decides otherwise. Numerics and kernels differ.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a private module: a TensorFlow without it just cannot say
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def tf_keras():
    """Return ``tf.keras`` (tf-keras), refusing a process where Keras 3 is already loaded."""
    already = "tensorflow" in sys.modules
    select_legacy_keras()
    import tensorflow as tf

    if not tf.keras.__name__.startswith("tf_keras"):
        raise GenresError(
            "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set"
            + (" (imported earlier in this process)" if already else "")
            + "; set it in the environment of every driver, worker and actor")
    return tf.keras


@contextlib.contextmanager
def native_stderr_quiet():
    """File descriptor 2 to /dev/null for a moment, unless ``--verbose`` (GENRES_VERBOSE=1):
    TensorFlow's and LiteRT's C++ write their notes there through absl before anything can set
    a level (``I0000 ... port.cc:153] oneDNN custom operations are on``, ``cudart_stub``,
    ``E0000 ... failed call to cuInit`` on a machine without a GPU, "Created TensorFlow Lite
    XNNPACK delegate"); TF_CPP_MIN_LOG_LEVEL does not reach them. A failure still raises."""
    if os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def load_tensorflow_quietly() -> None:
    """Import TensorFlow (tf-keras) and let it look for GPUs once, its import-time and device
    notes silenced (:func:`native_stderr_quiet`); later imports are free and quiet."""
    if "tensorflow" in sys.modules:
        return
    with native_stderr_quiet():
        tf_keras()
        import tensorflow as tf

        tf.config.list_physical_devices()
