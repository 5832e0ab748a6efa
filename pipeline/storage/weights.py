"""Pretrained musicnn weights, taken from the ``musicnn==0.1.0`` wheel as data.

The wheel's code is never imported (it switches TensorFlow to graph mode at import and pins an
ancient numpy): ``pip download`` fetches it into the project's cache, and the TF1 checkpoints
inside are read variable by variable with TensorFlow's checkpoint reader.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from pipeline.errors import GenresError

log = logging.getLogger(__name__)

WHEEL = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
MODELS = {"MSD": "MSD_musicnn", "MTT": "MTT_musicnn"}


def cache_dir() -> pathlib.Path:
    """Where weights live: $GENRES_CACHE, else ~/.cache/genres."""
    return pathlib.Path(os.environ.get("GENRES_CACHE") or pathlib.Path.home() / ".cache" / "genres")


def fetch_wheel(*, download: bool = True) -> pathlib.Path:
    """The musicnn wheel in the cache, downloaded with pip when missing (never at import)."""
    folder = cache_dir()
    wheel = folder / WHEEL
    if not wheel.exists():
        if not download:
            raise GenresError(f"musicnn weights are not in {folder}; run `genres weights` first")
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading musicnn==0.1.0 (weights only) into %s", folder)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                 "--only-binary=:all:", "musicnn==0.1.0", "-d", str(folder)],
                                capture_output=True, text=True)
        if result.returncode or not wheel.exists():
            raise GenresError(f"could not download musicnn==0.1.0 with pip: "
                              f"{result.stderr.strip().splitlines()[-1:] or result.returncode}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise GenresError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}; delete it and "
                          f"run `genres weights` again")
    return wheel


def weights_hash() -> str:
    return WHEEL_SHA256[:16]


def _unpacked(model: str) -> pathlib.Path:
    """The checkpoint files of ``model`` (e.g. MSD_musicnn), unpacked once from the wheel."""
    wheel = fetch_wheel()
    target = cache_dir() / "musicnn-0.1.0" / model
    if (target / ".index").exists():
        return target
    # Each process unpacks into a folder of its own and renames it into place: extract tasks
    # on a fresh node unpack at the same time, and a shared folder mixed their files (a
    # failed rename, a checkpoint read half-written).
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model}.tmp-") as tmp:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(f"musicnn/{model}/."):
                    z.extract(name, tmp)
        try:
            os.replace(pathlib.Path(tmp) / "musicnn" / model, target)
        except OSError:  # another process's complete copy is in place already
            if not (target / ".index").exists():
                raise
    return target


def read_checkpoint(name: str) -> dict[str, np.ndarray]:
    """Variables of musicnn model ``name`` ("MSD" or "MTT"), without optimizer slots.

    The wheel's ``checkpoint`` files point at the author's machine, so the reader is given the
    file prefix (folder + "/": the files are ``.index`` and ``.data-00000-of-00001``).
    """
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(str(_unpacked(MODELS[name])) + "/")
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if "Adam" not in key and not key.startswith("beta")}


def read_tags(name: str) -> list[str]:
    """Tag names of model ``name`` in output order, read (not imported) from the wheel."""
    with zipfile.ZipFile(fetch_wheel()) as z:
        tree = ast.parse(z.read("musicnn/configuration.py").decode())
    wanted = f"{name}_LABELS"
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == wanted:
            return list(ast.literal_eval(node.value))
    raise GenresError(f"{wanted} not found in the musicnn wheel")
