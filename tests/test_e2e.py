"""End to end on local Ray through the real CLI: extract -> train (2 workers) -> score -> tag."""

import datetime
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from corpus import current
from deltalake import DeltaTable

from pipeline import cli
from pipeline.demo import synthesise_catalog
from pipeline.runtime.cluster import RunOptions
from pipeline.runtime.score import ScoreConfig, run_score

pytestmark = [pytest.mark.slow, pytest.mark.ray]

LABEL_COLUMNS = ["song_id", "uri", "genre", "confidence", "probabilities", "top_tags", "n_frames",
                 "aggregator", "model_id", "scored_at", "error", "message", "run_id", "attempt"]


def _table(path: str) -> pd.DataFrame:
    """A Delta table as any reader sees it: deltalake and pandas, not this package."""
    return DeltaTable(path).to_pandas()


def _labels(path: str) -> pd.DataFrame:
    rows = _table(path)
    return rows[rows.error.isna()]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Synthesised labelled songs plus one corrupt file, as a manifest with a song split."""
    root = tmp_path_factory.mktemp("catalog")
    manifest = synthesise_catalog(str(root), songs_per_genre=9, seconds=12.0, seed=1)
    bad = root / "bad.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 40000, dtype=np.uint8).tobytes())
    with open(manifest, "a") as f:
        f.write("bad.wav,noise,test\n")
    return manifest


def test_extract_train_score_tag(ray_session, catalog, tmp_path):
    features, model, labels = (str(tmp_path / n) for n in ("features", "model", "labels"))
    truth = pd.read_csv(catalog)
    truth["song_id"] = truth["uri"].str.rsplit(".", n=1).str[0]

    assert cli.main(["extract", catalog, "--out", features]) == 0
    frames = pd.read_parquet(features, columns=["song_id", "frame", "label", "split"])
    index = _table(f"{features}/_songs")
    errors = index[index.error.notna()].reset_index()
    good = set(truth.song_id) - {"bad"}
    assert set(frames.song_id) == good and list(errors.song_id) == ["bad"]
    assert (frames.groupby("song_id").size() == 2).all()  # 12 s -> two 5 s frames
    assert errors.error[0] == "decode"

    assert cli.main(["train", features, "--out", model, "--num-workers", "2", "--epochs", "8",
                     "--batch-size", "8", "--patience", "3"]) == 0
    for name in ("model.keras", "labels.json", "spec.json", "normalization.json", "config.json",
                 "metrics.json", "history.csv", "plots/learning_curves.png", "plots/confusion.png"):
        assert (current(tmp_path / "model") / name).exists(), name
    metrics = pd.read_json(current(tmp_path / "model") / "metrics.json", typ="series")
    assert set(metrics["test"]["song_accuracy"]) == {"majority", "mean", "logodds", "sequence"}

    assert cli.main(["score", catalog, "--model", model, "--out", labels]) == 0
    table = _table(labels)
    assert list(table.columns) == LABEL_COLUMNS
    out = table[table.error.isna()].merge(truth, on="song_id")
    assert set(out.song_id) == good and len(out) == len(good)
    assert (out.n_frames == 2).all() and out.confidence.between(0, 1).all()
    assert list(table[table.error.notna()].song_id) == ["bad"]
    test = out[out.split == "test"]
    accuracy = (test.genre == test.label).mean()
    assert accuracy >= 0.8, f"song accuracy {accuracy:.2f} on held-out songs (chance 0.33)"

    # tag is incremental: nothing new on a re-run, only the new song after adding one
    assert cli.main(["tag", catalog, "--model", model, "--out", labels]) == 0
    assert len(_table(labels)) == len(good) + 1
    rows = pd.read_csv(catalog)
    rows["song_id"] = rows["uri"].str.rsplit(".", n=1).str[0]
    rows["uri"] = catalog.rsplit("/", 1)[0] + "/" + rows["uri"]
    added = rows.iloc[[0]].assign(song_id="added/copy")
    new_manifest = tmp_path / "more.csv"
    pd.concat([rows, added]).to_csv(new_manifest, index=False)
    assert cli.main(["tag", str(new_manifest), "--model", model, "--out", labels]) == 0
    again = _labels(labels)
    assert len(again) == len(good) + 1 and "added/copy" in set(again.song_id)


def test_extract_gtzan3_manifest_with_corrupt_file(ray_session, shared_data, tmp_path):
    rows = pd.read_csv(shared_data / "gtzan3" / "manifest.csv", keep_default_na=False)
    rows["uri"] = str(shared_data / "gtzan3") + "/" + rows["uri"]
    bad = {"uri": str(shared_data / "bad" / "jazz.00054.headerless.wav"), "label": "jazz",
           "split": "", "song_id": "bad/jazz.00054"}
    rows["song_id"] = rows["uri"].str.split("/").str[-2:].str.join("/").str.rsplit(".", n=1).str[0]
    manifest = tmp_path / "manifest.csv"
    pd.concat([rows, pd.DataFrame([bad])]).to_csv(manifest, index=False)
    out = str(tmp_path / "features")
    # 5 s per song keeps the test quick; the whole songs are the benchmark's business
    assert cli.main(["extract", str(manifest), "--out", out, "--max-seconds", "5"]) == 0
    frames = pd.read_parquet(out, columns=["song_id", "split"])
    index = _table(f"{out}/_songs")
    errors = index[index.error.notna()].reset_index()
    assert frames.song_id.nunique() == 300 and len(frames) == 300
    assert list(errors.song_id) == ["bad/jazz.00054"] and errors.error[0] == "decode"
    assert "jazz.00054.headerless.wav" in errors.message[0]
    # re-running skips committed work and writes nothing new
    assert cli.main(["extract", str(manifest), "--out", out, "--max-seconds", "5"]) == 0
    assert len(pd.read_parquet(out, columns=["song_id"])) == 300


@pytest.fixture(scope="module")
def features(catalog, tmp_path_factory, ray_session):
    out = str(tmp_path_factory.mktemp("features") / "features")
    assert cli.main(["extract", catalog, "--out", out]) == 0
    return out


# cnn2d trains in test_extract_train_score_tag; cnn1d_mel100ms reads the same log-mel column
# as cnn2d through the same path (its model is built and converted in test_lite): ~50 s of CI
@pytest.mark.parametrize("model", ["dnn", "cnn1d", "mil"])
def test_every_model_trains_one_epoch_and_scores(catalog, features, tmp_path, model):
    bundle, labels = str(tmp_path / "model"), str(tmp_path / "labels")
    assert cli.main(["train", features, "--out", bundle, "--model", model, "--epochs", "1",
                     "--num-workers", "1", "--batch-size", "4"]) == 0
    metrics = pd.read_json(current(tmp_path / "model") / "metrics.json", typ="series")
    test = metrics["test"]
    rows = pd.read_csv(catalog)
    held_out = ((rows.split == "test") & (rows.uri != "bad.wav")).sum()
    assert metrics["epochs_run"] == 1 and test["songs"] == held_out
    aggregator = "mil" if model == "mil" else "sequence"
    if model == "mil":  # bags: song accuracy only
        assert set(test["song_accuracy"]) == {"mil"} and test["frame_accuracy"] is None
    else:
        assert set(test["song_accuracy"]) == {"majority", "mean", "logodds", "sequence"}
        assert 0 <= test["frame_accuracy"] <= 1
    # frame models score on CPU with the bundle's LiteRT copy; mil runs Keras in the actors
    assert (current(tmp_path / "model") / "model.tflite").exists() == (model != "mil")
    summary = run_score(catalog, labels, ScoreConfig(
        model=bundle, aggregate=None if model == "mil" else "sequence"))
    # TensorFlow actors (mil, the sequence GRU) are heavy: decoding stays in tasks, unfused
    assert "MapBatches(decode_batch) -> MapBatches(SongScorer)" in summary["plan"]
    out = _labels(labels)
    assert len(out) == 27 and set(out.aggregator) == {aggregator}
    assert np.allclose([sum(dict(p).values()) for p in out.probabilities], 1, atol=1e-4)
    # training evaluated the model as scoring runs it (one SongModel): the test songs' labels
    # are right as often as the bundle's metrics say
    rows["song_id"] = rows.uri.str.rsplit(".", n=1).str[0]
    test_songs = out.merge(rows[rows.split == "test"], on="song_id")
    assert len(test_songs) == held_out
    assert (test_songs.genre == test_songs.label).mean() == pytest.approx(
        test["song_accuracy"][aggregator])


def test_train_from_a_frame_table(ray_session, shared_data, tmp_path):
    """Kaggle's 3 s feature rows (name, label, 57 features) -> dnn -> every aggregator."""
    table = pd.read_csv(shared_data / "gtzan_features" / "features_3_sec_classical_jazz_rock.csv")
    songs = table.filename.str.rsplit(".", n=2).str[0]
    small = table[songs.isin(sorted(set(songs))[::10])]  # 30 songs, ~300 frames
    path = tmp_path / "frames.csv"
    small.to_csv(path, index=False)
    bundle = tmp_path / "model"
    assert cli.main(["train", str(path), "--frame-table", "--name-column", "filename",
                     "--song-pattern", r"^(?P<song>\w+\.\d+)\.\d+\.wav$", "--model", "dnn",
                     "--split", "song", "--epochs", "1", "--out", str(bundle)]) == 0
    metrics = pd.read_json(current(bundle) / "metrics.json", typ="series")
    assert set(metrics["test"]["song_accuracy"]) == {"majority", "mean", "logodds", "sequence"}
    spec = pd.read_json(current(bundle) / "spec.json", typ="series")
    assert spec["kind"] == "table" and len(spec["spec"]["features"]) == 58  # length + 57
    # a table bundle refuses audio, on one line
    assert cli.main(["score", str(shared_data / "gtzan_other"), "--model", str(bundle),
                     "--out", str(tmp_path / "labels")]) == 2


def test_a_restarted_run_resumes_from_its_last_checkpoint(features, tmp_path, capsys):
    storage, out = str(tmp_path / "ray-train"), str(tmp_path / "model")
    common = ["train", features, "--model", "dnn", "--num-workers", "1", "--patience", "50",
              "--storage-path", storage, "--out", out]
    assert cli.main([*common, "--epochs", "2"]) == 0
    first = pd.read_csv(current(tmp_path / "model") / "history.csv")
    # the same output, settings and data find the same run without being told its name
    assert cli.main([*common, "--epochs", "4"]) == 0
    history = pd.read_csv(current(tmp_path / "model") / "history.csv")
    # epochs 1-2 come from the first run's checkpoint, 3-4 were trained by the second
    assert list(history.epoch) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(history.iloc[:2], first)
    metrics = pd.read_json(current(tmp_path / "model") / "metrics.json", typ="series")
    assert metrics["workers"]["resumed"] == 1
    # a named run is not resumed with other settings: one line that says what to do
    (run,) = [p.name for p in (tmp_path / "ray-train").iterdir()]
    capsys.readouterr()
    assert cli.main([*common, "--epochs", "1", "--seed", "7", "--run-name", run]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other seed" in err and "--run-name" in err


@pytest.fixture(scope="module")
def two_models(features, tmp_path_factory):
    """Two versions of a model (one epoch each, different seeds): two model_ids."""
    root = tmp_path_factory.mktemp("models")
    paths = [str(root / f"dnn-{seed}") for seed in (0, 1)]
    for seed, path in enumerate(paths):
        assert cli.main(["train", features, "--out", path, "--model", "dnn", "--epochs", "1",
                         "--seed", str(seed)]) == 0
    return paths


def test_tag_is_incremental_across_features_audio_and_model_versions(catalog, features,
                                                                     two_models, tmp_path):
    from pipeline.runtime.labels import latest_labels
    from pipeline.storage.bundle import read_bundle

    first, second = (read_bundle(p) for p in two_models)
    assert first.model_id != second.model_id
    labels = str(tmp_path / "labels")

    # precomputed features: scored without decoding; the extraction error is carried over;
    # in windows of 10 songs, each committed as it ends
    s = run_score(features, labels, ScoreConfig(model=first.root), RunOptions(songs_per_window=10))
    assert s["labelled"] == 27 and s["failed"] == 1 and s["skipped"] == 0
    assert s["commits"] == 1 + 3  # the carried error, then a commit per window
    # a LiteRT model is light: its actors read the parts themselves, no task waits for a CPU
    assert "MapBatches(SongScorer)" in s["plan"] and "read_feature_songs" not in s["plan"]
    table = _table(labels)
    assert list(table[table.error.notna()].song_id) == ["bad"]
    version = DeltaTable(labels).version()

    # re-runs write nothing, whether from the features or from the audio
    assert cli.main(["tag", features, "--model", first.root, "--out", labels]) == 0
    assert cli.main(["tag", catalog, "--model", first.root, "--out", labels]) == 0
    assert DeltaTable(labels).version() == version

    # a new model version re-tags everything under its own model_id; the old rows stay
    s = run_score(catalog, labels, ScoreConfig(model=second.root))
    # LiteRT actors decode their own songs: no decode tasks, frames never cross the store
    assert "MapBatches(SongScorer)" in s["plan"] and "decode_batch" not in s["plan"]
    rows = _labels(labels)
    assert rows.groupby("model_id").size().to_dict() == {first.model_id: 27, second.model_id: 27}
    latest = latest_labels(labels).to_pandas()
    assert len(latest) == 27 and set(latest.model_id) == {second.model_id}
    assert set(latest_labels(labels, model_id=first.model_id).to_pandas().song_id) == \
        set(latest.song_id)
    # time travel: the table as it was before the second model
    before = latest_labels(labels, as_of=version).to_pandas()
    assert len(before) == 27 and set(before.model_id) == {first.model_id}

    # the morning report over both models, with the new model's bundle beside its labels
    page, summary = tmp_path / "report" / "report.html", tmp_path / "report.json"
    assert cli.main(["report", labels, "--model", second.root, "--since", str(version),
                     "--out", str(page), "--json", str(summary)]) == 0
    figures = json.loads(summary.read_text())
    test = json.loads((pathlib.Path(second.root) / "metrics.json").read_text())["test"]
    assert figures["bundle"]["model_id"] == second.model_id and figures["bundle"]["test"] == test
    assert {m: f["labelled"] for m, f in figures["models"].items()} == \
        {first.model_id: 27, second.model_id: 27}
    assert figures["models"][second.model_id]["changes"]["added"] == 27
    assert figures["models"][first.model_id]["changes"]["songs_changed"] == 0
    # genres, a confidence histogram per model, and a confusion matrix per aggregator
    assert page.read_text().count("<svg") == 3 + len(test["confusion"]) >= 4


def test_features_of_another_spec_are_refused(two_models, tmp_path, capsys):
    from pipeline.features import FeatureSpec
    from pipeline.storage.shards import FeatureStore

    other = str(tmp_path / "features-64-mels")
    FeatureStore(other).prepare(FeatureSpec(n_mels=64))
    assert cli.main(["score", other, "--model", two_models[0], "--out", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_mels 64 != 128" in err


def test_a_tampered_bundle_and_a_foreign_out_are_refused_by_name(catalog, features, two_models,
                                                                 tmp_path, capsys):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(two_models[0], bundle)
    data = bytearray((current(bundle) / "model.tflite").read_bytes())
    data[-1] ^= 0xFF  # one bit of the weights: still a flatbuffer LiteRT would load
    (current(bundle) / "model.tflite").write_bytes(bytes(data))
    labels = tmp_path / "labels"
    assert cli.main(["score", catalog, "--model", str(bundle), "--out", str(labels)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.tflite is not the file model" in err[0], err
    # train's --out: a folder that is not a bundle is never replaced
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli.main(["train", features, "--out", str(foreign), "--model", "dnn"]) == 2
    assert "is left alone" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def _tag_process(catalog: str, model: str, labels: str, songs_per_file: int):
    """`genres tag` in a process of its own (its own local Ray), committing every file."""
    import os
    import subprocess
    import sys

    code = ("import sys; from pipeline.runtime.cluster import RunOptions; "
            "from pipeline.runtime.score import ScoreConfig, run_score; "
            "s = run_score(sys.argv[1], sys.argv[3], ScoreConfig(model=sys.argv[2], "
            "songs_per_file=int(sys.argv[4])), RunOptions(commit_every_s=0)); "
            "print(s['labelled'], s['failed'], s['commits'])")
    return subprocess.Popen([sys.executable, "-c", code, catalog, model, labels,
                             str(songs_per_file)], env={**os.environ, "RAY_ADDRESS": ""},
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _copies(catalog: str, folder, copies: int) -> str:
    """The catalog's songs ``copies`` times under new song_ids (a longer run)."""
    rows = pd.read_csv(catalog)
    rows["uri"] = catalog.rsplit("/", 1)[0] + "/" + rows["uri"]
    path = folder / "copies.csv"
    pd.concat([rows.assign(song_id=[f"copy{k}/{u.rsplit('/', 1)[-1]}" for u in rows.uri])
               for k in range(copies)]).to_csv(path, index=False)
    return str(path)


def test_kill_9_mid_tag_then_rerun_labels_each_song_once(catalog, two_models, tmp_path):
    import os
    import signal
    import time

    many = _copies(catalog, tmp_path, 8)  # 224 songs
    labels = str(tmp_path / "labels")
    log = tmp_path / "labels" / "_delta_log"
    proc = _tag_process(many, two_models[0], labels, songs_per_file=1)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(log.glob("*.json"))) < 3:  # created + 2 commits
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # driver, raylet, workers, mid-run
    proc.wait()
    done = len(_table(labels))
    assert 1 <= done < 224, f"kill landed after {done} of 224 songs"

    rerun = _tag_process(many, two_models[0], labels, songs_per_file=4)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    rows = _table(labels)
    assert len(rows) == 224 and rows.song_id.is_unique  # 216 labels, the bad file's 8 errors
    assert rows.run_id.nunique() == 2 and rows.error.notna().sum() == 8
    labelled, failed, _ = map(int, out.split()[-3:])
    assert labelled + failed == 224 - done


def test_two_overlapping_tag_runs_label_each_song_once(catalog, two_models, tmp_path):
    """Two tags of one catalog at once (threads on one Ray, so that both plan before either
    commits): each song is labelled once, by whichever run committed it first."""
    from concurrent.futures import ThreadPoolExecutor

    many = _copies(catalog, tmp_path, 4)  # 112 songs
    labels = str(tmp_path / "labels")
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_score, many, labels,
                            ScoreConfig(model=two_models[1], songs_per_file=2),
                            RunOptions(commit_every_s=0)) for _ in range(2)]
        summaries = [run.result(timeout=600) for run in runs]
    rows = _table(labels)
    assert len(rows) == 112 and rows.song_id.is_unique
    assert sum(s["labelled"] + s["failed"] for s in summaries) == 112
    print("overlapping runs:", [{k: s[k] for k in ("labelled", "failed", "commits", "refused",
                                                   "resolved")} for s in summaries])
    # they overlapped: a run found songs of its pending files committed by the other and
    # dropped them (which run commits which songs first is up to timing)
    assert sum(s["resolved"] for s in summaries)


def test_a_poison_song_costs_itself_in_tag_and_a_late_file_is_labelled_next_night(
        catalog, two_models, tmp_path):
    """The model actors decode their songs in a sandbox: a song that aborts the decoder is an
    error row (the actor lives on), a missing file is tried again by the next tag."""
    import os
    import shutil
    import subprocess
    import sys

    uris = [catalog.rsplit("/", 1)[0] + "/" + u for u in pd.read_csv(catalog).uri[:4]]
    first = uris[0]
    shutil.copy(first, tmp_path / "poison.wav")
    manifest = tmp_path / "nightly.csv"
    manifest.write_text("uri\n" + "".join(f"{u}\n" for u in uris)
                        + f"{tmp_path / 'poison.wav'}\n{tmp_path / 'late.wav'}\n")
    labels = str(tmp_path / "labels")

    start = datetime.datetime.now(datetime.timezone.utc)

    def tag(faults="", days=0):
        now = (start + datetime.timedelta(days=days)).isoformat()  # the night it runs
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "tag", str(manifest),
                               "--model", two_models[0], "--out", labels],
                              env={**os.environ, "RAY_ADDRESS": "", "GENRES_FAULTS": faults,
                                   "GENRES_NOW": now},
                              capture_output=True, text=True, timeout=400)

    night = tag("abort:poison")
    assert night.returncode == 0, night.stderr[-3000:]
    assert "6 songs in, 0 already labelled, 4 labelled, 2 failed (crash=1, missing=1)" \
        in night.stdout, night.stdout
    shutil.copy(first, tmp_path / "late.wav")
    next_night = tag(days=1)
    assert next_night.returncode == 0, next_night.stderr[-3000:]
    assert "6 songs in, 5 already labelled, 1 tried again, 1 labelled, 0 failed" \
        in next_night.stdout, next_night.stdout
    rows = _table(labels)
    latest = rows.sort_values("scored_at").drop_duplicates("song_id", keep="last")
    assert len(rows) == 7 and len(latest) == 6  # the late song: its error, then its label
    failed = latest[latest.error.notna()]
    assert [(s.rsplit("/", 1)[-1], e) for s, e in zip(failed.song_id, failed.error)] == [
        ("poison", "crash")]


def test_a_bundle_saved_again_during_a_tag_changes_the_next_run_not_this_one(
        catalog, two_models, tmp_path):
    """The run reads the bundle's pointer once and scores with that version to the end; the
    version published meanwhile (a new pointer, as `genres train` writes it) labels the next."""
    import shutil
    import time

    from pipeline.storage.bundle import _publish, read_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(two_models[0], bundle)
    old, new = read_bundle(str(bundle)).model_id, read_bundle(two_models[1]).model_id
    many = _copies(catalog, tmp_path, 8)  # 224 songs
    labels = str(tmp_path / "labels")
    log = tmp_path / "labels" / "_delta_log"
    proc = _tag_process(many, str(bundle), labels, songs_per_file=1)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(log.glob("*.json"))) < 2:  # created + a commit
        time.sleep(0.05)
    _publish(str(current(two_models[1])), str(bundle), new)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    rows = _table(labels)
    assert len(rows) == 224 and set(rows.model_id) == {old}  # not one song by the new model
    assert read_bundle(str(bundle)).model_id == new
    nightly = _tag_process(many, str(bundle), labels, songs_per_file=64)
    out, err = nightly.communicate(timeout=300)
    assert nightly.returncode == 0, err[-2000:]
    assert _table(labels).groupby("model_id").size().to_dict() == {old: 224, new: 224}


def test_a_secret_in_the_environment_or_a_signed_uri_is_in_no_output_and_no_file(
        catalog, two_models, tmp_path):
    """Credentials in the environment and presigned-URL signatures in a manifest reach no log
    line, no table, no file (Ray's own session logs included)."""
    import os
    import pathlib
    import secrets
    import shutil
    import subprocess
    import sys
    import tempfile

    key, signature = secrets.token_hex(12), secrets.token_hex(12)
    uris = [catalog.rsplit("/", 1)[0] + "/" + u for u in pd.read_csv(catalog).uri[:3]]
    manifest = tmp_path / "signed.csv"
    manifest.write_text("uri\n" + "".join(f"{u}\n" for u in uris)
                        + f"gone.wav?X-Amz-Signature={signature}&X-Amz-Credential=k\n")
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must be short
    env = {**os.environ, "RAY_ADDRESS": "", "AWS_SECRET_ACCESS_KEY": key,
           "AWS_SESSION_TOKEN": key, "RAY_TMPDIR": ray_tmp}
    outputs = []
    for command in (["extract", str(manifest), "--out", str(tmp_path / "features")],
                    ["tag", str(manifest), "--model", two_models[0],
                     "--out", str(tmp_path / "labels")]):
        run = subprocess.run([sys.executable, "-m", "pipeline.cli", *command], env=env,
                             capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "1 failed (missing=1)" in run.stdout, run.stdout
        outputs += [run.stdout, run.stderr]
    written = [p for root in (tmp_path / "features", tmp_path / "labels", ray_tmp)
               for p in pathlib.Path(root).rglob("*") if p.is_file()]
    assert len(written) > 10
    for secret in (key, signature):
        assert not any(secret in text for text in outputs)
        leaked = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaked, leaked
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_use_gpu_on_a_cluster_that_can_have_no_gpu_is_refused_in_one_line(catalog, features,
                                                                          two_models, tmp_path,
                                                                          capsys):
    # no GPU up, no autoscaler that could bring one: refused before any work, with the fix
    out = tmp_path / "labels"
    assert cli.main(["score", catalog, "--model", two_models[0], "--out", str(out),
                     "--use-gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "score --use-gpu needs 1 GPU(s) and this cluster can have 0 (the nodes up now)" in err
    assert "add a GPU worker type" in err and "drop --use-gpu" in err
    assert cli.main(["train", features, "--out", str(tmp_path / "m"), "--model", "dnn",
                     "--use-gpu", "--num-workers", "2", "--max-gpus", "1"]) == 2
    assert "train --use-gpu needs 2 GPU(s) and this cluster can have 1 (--max-gpus, else the " \
           "nodes up now)" in capsys.readouterr().err
