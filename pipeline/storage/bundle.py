"""Model bundles: a self-contained directory with weights, classes, spec and normalisation.

A bundle folder holds versions that are never changed once written, and a pointer to the
current one, replaced in one step (a rename locally, one PUT on an object store)::

    bundle.json                  {"current": "versions/<model_id>", "model_id": ...}
    versions/<model_id>/...      one version's files, below

A run reads the pointer once and uses that version throughout: a bundle saved again
meanwhile changes what the next run scores with, never half of this one. Each version::

    model.keras          the tf-keras model (architecture + weights)
    model.tflite         frame models: a TFLite copy of model.keras, what scoring runs on CPU
    sequence.keras       frame models: the learned ``sequence`` aggregator (GRU on frame log-odds)
    bundle.json          model_id (fingerprint of everything below), each file's sha256 (checked
                         on load: a changed file is refused by name), model name, feature column,
                         level (``frame`` or ``song``) and the aggregators it supports
    labels.json          class order of the model's outputs
    spec.json            the FeatureSpec the model was trained on (with fingerprint)
    normalization.json   per-band mean/std fitted on train songs only (bundles that say
                         ``"normalization": "in_model"`` apply it in the model's first layer)
    config.json          the training configuration
    calibration.json     the temperature that turns the song scores of one aggregator into
                         calibrated probabilities (fitted on the validation songs); bundles
                         without one score uncalibrated (temperature 1)
    metrics.json         frame / song accuracy per aggregator on the test split, confusion
    history.csv          per-epoch loss and accuracy (train and validation)
    plots/*.png          learning curves, confusion matrix
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import tempfile

import numpy as np

from pipeline.errors import BundleError
from pipeline.evaluate import scored_accuracy, with_temperature
from pipeline.features.spec import FeatureSpec, spec_from_record
from pipeline.plots import confusion_figure, pyplot, save
from pipeline.storage import fs as fsio

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
LITE_FILE = "model.tflite"
SEQUENCE_FILE = "sequence.keras"
CALIBRATION_FILE = "calibration.json"
MUSICNN_FILE = "musicnn.npz"  # embedding bundles: the pretrained network travels with the head
# The files a version's model_id covers (those it has of them): what save_bundle writes and
# hashes, and what `genres migrate` hashes for an older bundle
VERSION_FILES = (MODEL_FILE, LITE_FILE, SEQUENCE_FILE, "labels.json", "spec.json",
                 "normalization.json", "config.json", CALIBRATION_FILE, MUSICNN_FILE)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What scoring needs from a bundle, without loading TensorFlow."""

    root: str
    model_id: str
    model: str
    feature: str
    classes: tuple[str, ...]
    spec: FeatureSpec  # or EmbeddingSpec
    mean: np.ndarray  # [n_bands]
    std: np.ndarray  # [n_bands]
    level: str = "frame"  # "song": the model takes a bag of frames per song (mil)
    aggregators: tuple[str, ...] = ("majority", "mean", "logodds")
    normalized_in_model: bool = False  # older bundles: the scorer normalises the input
    files: tuple[tuple[str, str], ...] = ()  # (name, sha256) of the files model_id covers
    calibrated: str | None = None  # the aggregator whose song scores ``temperature`` calibrates
    temperature: float = 1.0

    def calibrate(self, scores: np.ndarray, aggregator: str) -> np.ndarray:
        """Song scores [n_songs, n_classes] of ``aggregator``, calibrated when the bundle was
        calibrated for it (same order of classes, so the same winner), else as they are."""
        if aggregator != self.calibrated or self.temperature == 1.0:
            return scores
        return with_temperature(np.asarray(scores, np.float64), self.temperature)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Rows [n, n_bands, ...] as the model takes them (float32): normalised with the
        train-split statistics, unless the model does that itself."""
        if self.normalized_in_model:
            return x.astype(np.float32)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return ((x.astype(np.float32) - self.mean.reshape(shape))
                / self.std.reshape(shape)).astype(np.float32)

    def musicnn_variables(self) -> dict[str, np.ndarray]:
        """The pretrained musicnn weights carried by an embedding bundle."""
        import io

        raw = fsio.read_bytes(fsio.join(self.root, MUSICNN_FILE))
        _check_file(self, MUSICNN_FILE, raw)
        with np.load(io.BytesIO(raw)) as data:
            return {key.replace("|", "/"): data[key] for key in data.files}


BUNDLE_FILE = "bundle.json"
VERSIONS = "versions"


def save_bundle(out: str, *, model, lite_model: bytes | None = None, model_name: str,
                feature: str, classes: list[str],
                spec: FeatureSpec, mean: np.ndarray, std: np.ndarray, config: dict,
                metrics: dict, history: list[dict], level: str = "frame",
                pooling: str | None = None, sequence_model=None,
                calibration: dict | None = None) -> str:
    """Write a bundle version to ``out`` (local or URI) and make it the current one; returns
    its model_id. Versions already there stay (runs may be using them).

    ``model`` normalises its own input (``mean``/``std`` are recorded for reference);
    ``lite_model`` is a frame model's LiteRT copy (:func:`pipeline.models.lite.to_tflite`);
    ``pooling`` names a song-level model's own aggregation (default: the model's name);
    ``calibration``: {"aggregator", "temperature", ...} (:func:`pipeline.evaluate.calibrate`)."""
    with tempfile.TemporaryDirectory(prefix="genres-bundle-") as tmp:
        docs = {
            "labels.json": list(classes),
            "spec.json": spec.to_record(),
            "normalization.json": {"feature": feature, "mean": np.asarray(mean).tolist(),
                                   "std": np.asarray(std).tolist()},
            "config.json": config,
        }
        if calibration is not None:
            docs[CALIBRATION_FILE] = {k: calibration[k] for k in
                                      ("aggregator", "temperature", "fitted_on", "songs")}
        names = _write_models(tmp, docs, model=model, lite_model=lite_model,
                              sequence_model=sequence_model, spec=spec)
        aggregators = [pooling or model_name] if level == "song" else ["majority", "mean", "logodds"]
        if sequence_model is not None:
            aggregators.append("sequence")
        files = {name: _sha256(pathlib.Path(tmp, name).read_bytes()) for name in names}
        model_id = _fingerprint(files)
        _write_json(os.path.join(tmp, "bundle.json"),
                    {"model_id": model_id, "files": files, "model": model_name,
                     "feature": feature,
                     "level": level, "aggregators": aggregators, "normalization": "in_model"})
        _write_json(os.path.join(tmp, "metrics.json"), {"model_id": model_id, **metrics})
        _write_history(os.path.join(tmp, "history.csv"), history)
        _write_plots(os.path.join(tmp, "plots"), metrics, history, classes)
        fsio.check_ours(out, BUNDLE_FILE, "a model bundle")
        _publish(tmp, out, model_id)
    return model_id


def _write_models(folder: str, docs: dict, *, model, lite_model: bytes | None, sequence_model,
                  spec) -> list[str]:
    """The files a version's model_id covers, written into ``folder``: the model, its LiteRT
    copy, the sequence aggregator, the pretrained musicnn weights (embedding bundles) and the
    JSON ``docs``; their names, in the order written."""
    model.save(os.path.join(folder, MODEL_FILE))
    for name, doc in docs.items():
        _write_json(os.path.join(folder, name), doc)
    names = [MODEL_FILE, *docs]
    if lite_model is not None:
        with open(os.path.join(folder, LITE_FILE), "wb") as f:
            f.write(lite_model)
        names.append(LITE_FILE)
    if sequence_model is not None:
        sequence_model.save(os.path.join(folder, SEQUENCE_FILE))
        names.append(SEQUENCE_FILE)
    if spec.kind == "musicnn":
        from pipeline.storage.weights import read_checkpoint

        np.savez(os.path.join(folder, MUSICNN_FILE),
                 **{k.replace("/", "|"): v for k, v in read_checkpoint(spec.model).items()})
        names.append(MUSICNN_FILE)
    assert set(names) <= set(VERSION_FILES), names  # what `genres migrate` hashes too
    return names


def _write_plots(folder: str, metrics: dict, history: list[dict], classes) -> None:
    """A version's plots: learning curves, the test confusion matrix, the reliability diagram
    and the heads' figures, where the metrics have them."""
    os.makedirs(folder)
    _plot_history(history, os.path.join(folder, "learning_curves.png"))
    if metrics.get("test"):
        # the aggregator shown is chosen on validation songs, never on the test split
        chosen = (metrics.get("valid") or metrics["test"])["song_accuracy"]
        best = max(chosen, key=chosen.get)
        save(confusion_figure(metrics["test"]["confusion"][best], classes,
                              f"song-level confusion ({best}), test split"),
             os.path.join(folder, "confusion.png"))
    if (metrics.get("calibration") or {}).get("test"):
        _plot_reliability(metrics["calibration"], os.path.join(folder, "reliability.png"))
    if len(metrics.get("heads") or {}) > 1:
        _plot_heads(metrics["heads"], metrics["head"], os.path.join(folder, "heads.png"))


def _publish(folder: str, out: str, model_id: str) -> None:
    """Upload a bundle version from the local ``folder`` to ``out/versions/<model_id>`` (its
    bundle.json last: a version with one is complete), then point ``out`` at it."""
    version = fsio.join(out, VERSIONS, model_id)
    fs, path = fsio.url_to_fs(version)
    if not fs.exists(fsio.join(path, BUNDLE_FILE)):
        if fs.exists(path):  # an upload that stopped halfway: never pointed at
            fs.rm(path, recursive=True)
        names = sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*")
                       if p.is_file())
        names.remove(BUNDLE_FILE)
        for name in [*names, BUNDLE_FILE]:
            target = fsio.join(path, name)
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(os.path.join(folder, name), target)
    pointer = {"current": f"{VERSIONS}/{model_id}", "model_id": model_id}
    fsio.write_bytes_atomic(fsio.join(out, BUNDLE_FILE), json.dumps(pointer, indent=2).encode())


def read_bundle(uri: str) -> Bundle:
    """Read the current version of a bundle (its metadata: no TensorFlow). ``root`` of the
    result is that version's folder, which never changes."""
    uri = str(uri).rstrip("/")
    try:
        meta = json.loads(fsio.read_text(fsio.join(uri, BUNDLE_FILE)))
        if "current" in meta:  # a bundle folder: its current version
            uri = fsio.join(uri, meta["current"])
            meta = json.loads(fsio.read_text(fsio.join(uri, BUNDLE_FILE)))
        classes = json.loads(fsio.read_text(fsio.join(uri, "labels.json")))
        spec = spec_from_record(json.loads(fsio.read_text(fsio.join(uri, "spec.json"))))
        norm = json.loads(fsio.read_text(fsio.join(uri, "normalization.json")))
        calibration = (json.loads(fsio.read_text(fsio.join(uri, CALIBRATION_FILE)))
                       if CALIBRATION_FILE in meta.get("files", {}) else {})
    except FileNotFoundError as e:
        raise BundleError(f"{uri} is not a model bundle (missing {e.filename or e}); "
                          f"train one with `genres train`") from e
    return Bundle(root=uri, model_id=meta["model_id"], model=meta["model"],
                  feature=meta["feature"], classes=tuple(classes), spec=spec,
                  mean=np.asarray(norm["mean"], np.float32), std=np.asarray(norm["std"], np.float32),
                  level=meta.get("level", "frame"),
                  aggregators=tuple(meta.get("aggregators", Bundle.aggregators)),
                  normalized_in_model=meta.get("normalization") == "in_model",
                  files=tuple(sorted(meta.get("files", {}).items())),
                  calibrated=calibration.get("aggregator"),
                  temperature=float(calibration.get("temperature", 1.0)))


def verify_bundle(bundle: Bundle) -> None:
    """Refuse a bundle whose files are not the ones its model_id was made of (changed by hand,
    half replaced by a copy): every file ``bundle.json`` lists is read and hashed. A bundle
    that lists none (saved by an older genres, or with the list deleted) is refused too:
    deleting one key must not turn the check off; `genres migrate` records the list once."""
    if not bundle.files:
        raise BundleError(f"{bundle.root} lists no file hashes (saved by an older genres, or "
                          f"its list removed), so its files cannot be verified; if you trust "
                          f"them, record them once with `genres migrate {bundle.root}`")
    for name, digest in bundle.files:
        _check_file(bundle, name, fsio.read_bytes(fsio.join(bundle.root, name)), digest)


def record_files(uri: str) -> dict:
    """`genres migrate` of a bundle saved before file hashes: its current version's
    ``bundle.json`` gets the sha256 of each of its files (what is there now, trusted by the
    user who asks), keeping its model_id, so label tables keep their partition."""
    bundle = read_bundle(uri)
    if bundle.files:
        raise BundleError(f"{uri} already lists its files' hashes: nothing to migrate")
    meta_uri = fsio.join(bundle.root, BUNDLE_FILE)
    meta = json.loads(fsio.read_text(meta_uri))
    meta["files"] = {name: _sha256(fsio.read_bytes(fsio.join(bundle.root, name)))
                     for name in VERSION_FILES if fsio.exists(fsio.join(bundle.root, name))}
    fsio.write_bytes_atomic(meta_uri, json.dumps(meta, indent=2).encode())
    return {"kind": "bundle", "model_id": bundle.model_id, "files": len(meta["files"]),
            "table": bundle.root}


def _check_file(bundle: Bundle, name: str, data: bytes, digest: str | None = None) -> None:
    digest = digest or dict(bundle.files).get(name)
    if digest is not None and _sha256(data) != digest:
        raise BundleError(f"{bundle.root}/{name} is not the file model {bundle.model_id} was "
                          f"saved with (changed or half replaced since); save or copy the "
                          f"bundle again")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zero_shot_bundle(name: str) -> Bundle:
    """A model-less bundle whose classes are musicnn ``name``'s own tags (MSD or MTT)."""
    from pipeline.features.spec import EmbeddingSpec
    from pipeline.storage.weights import read_tags, weights_hash

    tags = read_tags(name)
    return Bundle(root="", model_id=f"musicnn-{name}-{weights_hash()}", model=f"musicnn:{name}",
                  feature="taggram", classes=tuple(tags),
                  spec=EmbeddingSpec(model=name, weights=weights_hash()),
                  mean=np.zeros(len(tags), np.float32), std=np.ones(len(tags), np.float32))


def load_keras_model(bundle: Bundle, name: str = MODEL_FILE):
    """A tf-keras model of the bundle (``model.keras`` or ``sequence.keras``), copied to a
    local temp dir first when the bundle is remote; in Keras' safe mode (no lambda layers'
    code is run from a file)."""
    from pipeline.models.cnn import custom_objects
    from pipeline.models.keras import tf_keras

    keras = tf_keras()
    objects = custom_objects()
    with tempfile.TemporaryDirectory(prefix="genres-model-") as tmp:
        # read once, checked against bundle.json, loaded from this copy: what is loaded is
        # what was checked, even if the bundle changes meanwhile
        data = fsio.read_bytes(fsio.join(bundle.root, name))
        _check_file(bundle, name, data)
        local = os.path.join(tmp, name)
        with open(local, "wb") as f:
            f.write(data)
        return keras.models.load_model(local, compile=False, safe_mode=True,
                                       custom_objects=objects)


def read_lite_model(bundle: Bundle) -> bytes:
    """The TFLite flatbuffer of a frame bundle's model; bundles saved before ``model.tflite``
    existed get theirs converted here (this imports TensorFlow, ~15 s)."""
    uri = fsio.join(bundle.root, LITE_FILE)
    try:
        data = fsio.read_bytes(uri)
    except FileNotFoundError:
        from pipeline.models.lite import to_tflite

        return to_tflite(load_keras_model(bundle))
    # Checked here: LiteRT's own error for a cut or foreign file names neither file nor fix.
    if data[4:8] != b"TFL3":  # the flatbuffer's file identifier
        raise BundleError(f"{uri} is not a TFLite model ({len(data)} bytes); delete it and "
                          f"scoring converts {MODEL_FILE} again")
    _check_file(bundle, LITE_FILE, data)
    return data


def _fingerprint(files: dict[str, str]) -> str:
    """model_id: a hash of the files' names and sha256 digests (each file is read once)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\0".encode())
    return h.hexdigest()[:16]


def _write_json(path: str, doc) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def _write_history(path: str, history: list[dict]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys or ["epoch"])
        writer.writeheader()
        writer.writerows(history)


def _plot_history(history: list[dict], path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=("validation " if prefix else "train ") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    save(fig, path)


def _plot_heads(heads: dict, chosen: str, path: str) -> None:
    """Song accuracy (as scoring aggregates) of each head fitted, validation and test side by side:
    the logistic head is the linear baseline the network has to beat."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.2 * len(heads) + 2, 4))
    for k, (split, key) in enumerate((("validation", "valid_song_accuracy"),
                                      ("test", "test_song_accuracy"))):
        values = [scored_accuracy(figures[key]) if figures.get(key) else 0.0
                  for figures in heads.values()]
        bars = ax.bar(np.arange(len(heads)) + (k - 0.5) * 0.4, values, 0.4, label=split)
        ax.bar_label(bars, fmt="%.3f")
    # the choice is made on the validation song log-loss: shown under each head's name
    ax.set_xticks(range(len(heads)), [
        f"{h}{' (kept)' if h == chosen else ''}\nvalid log-loss "
        f"{f['valid_song_log_loss']:.3f}±{f['valid_song_log_loss_se']:.3f}"
        for h, f in heads.items()])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("song accuracy (as scored)")
    ax.set_title("embed heads: the logistic baseline vs the others")
    ax.legend(loc="lower right")
    save(fig, path)


def _plot_reliability(calibration: dict, path: str) -> None:
    """The test songs' reliability diagram before and after temperature scaling: accuracy
    against confidence per bin (the diagonal is a calibrated model), with songs per bin."""
    plt = pyplot()
    test = calibration["test"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, when in zip(axes, ("before", "after")):
        bins = test[f"reliability_{when}"]
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-")
        for b in bins:
            ax.annotate(str(b["songs"]), (b["confidence"], b["accuracy"]), fontsize=8,
                        textcoords="offset points", xytext=(4, -10))
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence (top probability)")
        shown = f" (T = {calibration['temperature']:.2f})" if when == "after" else ""
        ax.set_title(f"{when}{shown}: ECE {test[f'ece_{when}']:.3f}")
    axes[0].set_ylabel("accuracy of the songs in the bin")
    fig.suptitle(f"test songs' {calibration['aggregator']} scores; temperature fitted on "
                 f"{calibration['songs']} validation songs")
    save(fig, path)
