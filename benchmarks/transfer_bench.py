"""Transfer learning on musicnn features: each embed head and feature against a logistic baseline.

Run quietly:  .venv/bin/python benchmarks/transfer_bench.py [--catalogs gtzan3 games]
              [--features embedding pools] [--seeds 0 1 2]

For each catalog (GTZAN-3's artist-filtered manifest; the game-music catalog that
``benchmarks/game_music.py`` builds from Debian's packages, 60 s per track from 30 s in):
`genres extract --features musicnn --pools` (MSD), then in the same run

- the baseline the issue defines: scikit-learn's logistic regression (C=1) on the
  standardised 200-unit penultimate embeddings of the manifest's train songs' patches, a song
  = the mean of its patches' probabilities; for reference also the same on song-pooled
  vectors (mean and std over a song's patches, C=0.01) of the embedding and of the pools;
- `genres train --model embed --head auto` on ``--feature embedding`` and on ``--feature
  pools``: each fits the logistic, pooled and dense heads (validation songs from the
  manifest's, or from its train songs when it names none) and keeps the simplest whose
  song log-loss is within one standard error of the best: by 5-fold cross-validation over
  the train and validation songs (both catalogs have fewer than 1,000), held out by artist.

It prints every head's CV and validation log-loss and song accuracy, test song accuracy (per
aggregator), which one was kept, and the kept head's margin over the baseline (first seed),
then the kept head's test song accuracy and test-song expected calibration error before and
after temperature scaling over the seeds (mean, min-max).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENRES = str(pathlib.Path(sys.executable).parent / "genres")
CATALOGS = {"gtzan3": (ROOT.parent / "shared" / "data" / "gtzan3" / "manifest.csv", []),
            "games": (None, ["--offset-seconds", "30", "--max-seconds", "60"])}
FEATURES = ("embedding", "pools")


def features(name: str, work: pathlib.Path) -> str:
    """The catalog's musicnn features (extracted once into ``work``)."""
    manifest, options = CATALOGS[name]
    if manifest is None:
        from game_music import build

        manifest = build(work / "game-music")
    out = work / f"{name}-musicnn-pools"
    if not (out / "_spec.json").exists():
        started = time.perf_counter()
        subprocess.run([GENRES, "extract", str(manifest), "--out", str(out), "--features",
                        "musicnn", "--pools", *options], check=True)
        print(f"{name}: extract {time.perf_counter() - started:.0f} s", flush=True)
    return str(out)


def baseline(root: str) -> dict:
    """Test song accuracy of logistic regressions on the train songs' features."""
    from layers_bench import accuracy

    from pipeline.storage.shards import FeatureStore, tensor_values

    rows = FeatureStore(root).read_frames(["song_id", "label", "split", *FEATURES])
    d = {"song": np.asarray(rows.column("song_id").to_pylist()),
         "label": np.asarray(rows.column("label").to_pylist()),
         "split": np.asarray(rows.column("split").to_pylist()),
         **{f: tensor_values(rows.column(f)) for f in FEATURES}}
    first = {s: side for s, side in zip(d["song"], d["split"])}  # a song's split
    return {"patches, mean": accuracy(d, ["embedding"], pooled=False, c=1.0),
            **{f"{f} pooled": accuracy(d, [f], pooled=True, c=0.01) for f in FEATURES},
            "train songs": sum(side == "train" for side in first.values()),
            "test songs": sum(side == "test" for side in first.values())}


def train(root: str, work: pathlib.Path, name: str, feature: str, seed: int) -> dict:
    """`genres train --model embed --head auto --feature feature --seed seed`: its
    metrics.json."""
    out = work / f"{name}-embed-{feature}-{seed}"
    # a fresh fit: the same out and run name would resume an earlier bench's finished run
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([GENRES, "train", root, "--out", str(out), "--model", "embed", "--head",
                    "auto", "--feature", feature, "--epochs", "100", "--patience", "15",
                    "--batch-size", "16", "--seed", str(seed),
                    "--storage-path", str(work / "ray-results")],
                   check=True)
    from pipeline.storage.bundle import read_bundle

    metrics = json.loads((pathlib.Path(read_bundle(str(out)).root) / "metrics.json").read_text())
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def _cv(figures: dict) -> str:
    """A head's cross-validated song log-loss and accuracy cells (empty where none ran)."""
    if "cv_song_log_loss" not in figures:
        return " | "
    return (f"{figures['cv_song_log_loss']:.3f}±{figures['cv_song_log_loss_se']:.3f} "
            f"| {figures['cv_song_accuracy']:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogs", nargs="+", default=list(CATALOGS), choices=list(CATALOGS))
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="fresh fits per catalog and feature (run-to-run spread)")
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/genres-bench"))
    args = parser.parse_args(argv)
    from pipeline.evaluate import scored_accuracy

    shutil.rmtree(args.work / "ray-results", ignore_errors=True)  # earlier benches' runs
    rows, kept = [], []
    for name in args.catalogs:
        root = features(name, args.work)
        base = baseline(root)
        print(f"{name}: baseline {base}", flush=True)
        for feature in args.features:
            for seed in args.seeds:
                m = train(root, args.work, name, feature, seed)
                c = m["calibration"]
                print(f"{name}: --feature {feature} --seed {seed}: kept {m['head']} by "
                      f"{m['selection']['by']} on {m['selection']['songs']} songs, "
                      f"{m['valid']['songs']} validation songs, {m['seconds']:.0f} s; test "
                      f"{scored_accuracy(m['test']['song_accuracy']):.3f}, ECE "
                      f"{c['test']['ece_before']:.3f} -> {c['test']['ece_after']:.3f} "
                      f"(T = {c['temperature']:.2f})", flush=True)
                kept.append((name, feature, scored_accuracy(m["test"]["song_accuracy"]),
                             c["test"]["ece_before"], c["test"]["ece_after"], m["head"]))
                if seed != args.seeds[0]:
                    continue
                for head, figures in m["heads"].items():
                    rows.append((name, base, feature, head, head == m["head"], figures))
    print(f"\nseed {args.seeds[0]}, every head:")
    print("\n| catalog | train/test songs | baseline | feature | head | kept | CV log-loss | CV "
          "| valid log-loss | valid | majority | mean | logodds | sequence | pooled "
          "| as scored - baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, base, feature, head, chosen, figures in rows:
        test = figures["test_song_accuracy"]
        cells = " | ".join(f"{test[k]:.3f}" if k in test else "" for k in
                           ("majority", "mean", "logodds", "sequence", "pooled"))
        print(f"| {name} | {base['train songs']}/{base['test songs']} | "
              f"{base['patches, mean']:.3f} | {feature} | {head} | "
              f"{'**kept**' if chosen else ''} | {_cv(figures)} "
              f"| {figures['valid_song_log_loss']:.3f}±{figures['valid_song_log_loss_se']:.3f} "
              f"| {scored_accuracy(figures['valid_song_accuracy']):.3f} | {cells} "
              f"| {scored_accuracy(test) - base['patches, mean']:+.3f} |")
    print(f"\nthe kept head over seeds {args.seeds} (mean, min-max):")
    print("\n| catalog | feature | heads kept | test song accuracy | test ECE before | after |")
    print("|---|---|---|---|---|---|")
    for name, feature in dict.fromkeys((k[0], k[1]) for k in kept):
        runs = [k for k in kept if k[:2] == (name, feature)]
        cells = []
        for i in (2, 3, 4):
            v = np.array([r[i] for r in runs])
            cells.append(f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})")
        print(f"| {name} | {feature} | {', '.join(r[5] for r in runs)} | {' | '.join(cells)} |")
    for name, base in dict((r[0], r[1]) for r in rows).items():
        pooled = ", ".join(f"{f} {base[f'{f} pooled']:.3f}" for f in FEATURES)
        print(f"{name}: scikit-learn on song-pooled vectors (C=0.01): {pooled}")


if __name__ == "__main__":
    main()
