"""The command line's contract for bad input: exit non-zero with one line that says what to fix."""

import subprocess
import sys

import pytest


def _genres(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["extract", "somewhere"], "--out"),
    (["extract", "x", "--out", "y", "--frame-seconds", "-1"], "must be > 0"),
    (["train", "f", "--out", "m", "--split", "random"], "invalid choice"),
    (["extract", "/definitely/not/here", "--out", "/tmp/x"], "catalog not found"),
    (["train", "/definitely/not/here", "--out", "/tmp/x"], "not a feature directory"),
    (["score", "/definitely/not/here", "--model", "/nope", "--out", "/tmp/x"], "not a model bundle"),
    (["extract", "/definitely/not/here", "--out", "/tmp/x", "--use-gpu"], "--features musicnn"),
    (["score", "x", "--out", "y"], "one of the arguments --model --tags is required"),
])
def test_bad_arguments_exit_2_with_one_line(args, needle):
    result = _genres(*args)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("usage")]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_a_feature_the_directory_lacks_exits_2_with_the_fix(tmp_path):
    from corpus import tiny_features

    features = tiny_features(tmp_path, [{"song_id": "s", "seconds": 1.5, "label": "a"}])
    for args, needle in ((["--model", "cnn2d", "--feature", "pools"],
                          "--feature chooses the musicnn column of --model embed"),
                         (["--model", "embed", "--feature", "pools"],
                          "extract the matching --features musicnn --pools"),
                         (["--model", "dnn", "--head", "pooled"], "--head is for --model embed")):
        result = _genres("train", features, "--out", str(tmp_path / "m"), *args)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


def test_jobs_route_to_their_subcommand(tmp_path, capsys):
    from jobs import extract, score, tag, train

    missing = str(tmp_path / "missing")
    assert extract.main([missing, "--out", str(tmp_path / "f")]) == 2
    assert "genres extract: error: catalog not found" in capsys.readouterr().err
    assert train.main([missing, "--out", str(tmp_path / "m")]) == 2
    assert "genres train: error:" in capsys.readouterr().err
    for job, name in ((score, "score"), (tag, "tag")):
        assert job.main([missing, "--model", missing, "--out", str(tmp_path / "l")]) == 2
        assert f"genres {name}: error:" in capsys.readouterr().err


def test_the_demo_deletes_only_in_a_folder_it_made(tmp_path):
    mine = tmp_path / "mine"
    (mine / "labels").mkdir(parents=True)
    (mine / "labels" / "precious.txt").write_text("not the demo's")
    result = _genres("demo", "--workdir", str(mine))
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "is not a genres demo folder (no .genres-demo)" in lines[0]
    assert (mine / "labels" / "precious.txt").read_text() == "not the demo's"


def test_a_bundle_without_its_file_list_is_refused_until_migrated(tmp_path):
    import json

    from pipeline.features import FeatureSpec
    from pipeline.storage.bundle import read_bundle, verify_bundle

    bundle = tmp_path / "old-bundle"  # as genres saved them before file hashes
    bundle.mkdir()
    docs = {"bundle.json": {"model_id": "old", "model": "dnn", "feature": "mfcc"},
            "labels.json": ["a", "b"], "spec.json": FeatureSpec().to_record(),
            "normalization.json": {"feature": "mfcc", "mean": [0.0], "std": [1.0]},
            "config.json": {}}
    for name, doc in docs.items():
        (bundle / name).write_text(json.dumps(doc))
    (bundle / "model.keras").write_bytes(b"weights")
    result = _genres("score", str(tmp_path), "--model", str(bundle), "--out",
                     str(tmp_path / "labels"))
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "lists no file hashes" in lines[0] and f"genres migrate {bundle}" in lines[0]
    assert not (tmp_path / "labels").exists()
    result = _genres("migrate", str(bundle))
    assert result.returncode == 0 and "the hashes of its 5 files recorded" in result.stdout
    migrated = read_bundle(str(bundle))
    assert migrated.model_id == "old" and dict(migrated.files)["model.keras"]
    verify_bundle(migrated)  # now checked: a changed file is refused by name
    (bundle / "model.keras").write_bytes(b"other weights")
    result = _genres("score", str(tmp_path), "--model", str(bundle), "--out",
                     str(tmp_path / "labels"))
    assert result.returncode == 2 and "model.keras is not the file model old" in result.stderr
    assert _genres("migrate", str(bundle)).returncode == 2  # once
