"""Transfer learning on musicnn embeddings: each embed head against a logistic baseline.

Run quietly:  .venv/bin/python benchmarks/transfer_bench.py [--catalogs gtzan3 games]

For each catalog (GTZAN-3's artist-filtered manifest; the game-music catalog that
``benchmarks/game_music.py`` builds from Debian's packages, 60 s per track from 30 s in):
`genres extract --features musicnn` (MSD), then in the same run

- the baseline: scikit-learn's logistic regression on the standardised 200-unit patch
  embeddings of the manifest's train songs (a song = the mean of its patches' probabilities),
  and the same on song-pooled embeddings (mean and std over a song's patches);
- `genres train --model embed` with ``--head logistic``, ``--head dense`` and ``--head auto``
  (validation songs from the manifest's, or taken from its train songs when it names none).

It prints test song accuracy per aggregator and the chosen head's margin over the baseline.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENRES = str(pathlib.Path(sys.executable).parent / "genres")
CATALOGS = {"gtzan3": (ROOT.parent / "shared" / "data" / "gtzan3" / "manifest.csv", []),
            "games": (None, ["--offset-seconds", "30", "--max-seconds", "60"])}


def features(name: str, work: pathlib.Path) -> str:
    """The catalog's musicnn features (extracted once into ``work``)."""
    manifest, options = CATALOGS[name]
    if manifest is None:
        from game_music import build

        manifest = build(work / "game-music")
    out = work / f"{name}-musicnn"
    if not (out / "spec.json").exists():
        started = time.perf_counter()
        subprocess.run([GENRES, "extract", str(manifest), "--out", str(out), "--features",
                        "musicnn", *options], check=True)
        print(f"{name}: extract {time.perf_counter() - started:.0f} s", flush=True)
    return str(out)


def baseline(root: str) -> dict:
    """Test song accuracy of logistic regressions on the train songs' embeddings."""
    from layers_bench import accuracy

    from pipeline.storage.shards import FeatureStore, tensor_values

    rows = FeatureStore(root).read_frames(["song_id", "label", "split", "embedding"])
    d = {"song": np.asarray(rows.column("song_id").to_pylist()),
         "label": np.asarray(rows.column("label").to_pylist()),
         "split": np.asarray(rows.column("split").to_pylist()),
         "embedding": tensor_values(rows.column("embedding"))}
    first = {s: side for s, side in zip(d["song"], d["split"])}  # a song's split
    return {"patches, mean": accuracy(d, ["embedding"], pooled=False, c=1.0),
            "pooled": accuracy(d, ["embedding"], pooled=True, c=1.0),
            "train songs": sum(side == "train" for side in first.values()),
            "test songs": sum(side == "test" for side in first.values())}


def head(root: str, work: pathlib.Path, name: str, choice: str) -> dict:
    """`genres train --model embed --head choice`: its metrics.json."""
    out = work / f"{name}-embed-{choice}"
    started = time.perf_counter()
    subprocess.run([GENRES, "train", root, "--out", str(out), "--model", "embed", "--head",
                    choice, "--epochs", "60", "--patience", "10", "--batch-size", "32",
                    "--storage-path", str(work / "ray-results")], check=True)
    from pipeline.storage.bundle import read_bundle

    metrics = json.loads((pathlib.Path(read_bundle(str(out)).root) / "metrics.json").read_text())
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogs", nargs="+", default=list(CATALOGS), choices=list(CATALOGS))
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/genres-bench"))
    args = parser.parse_args(argv)
    rows = []
    for name in args.catalogs:
        root = features(name, args.work)
        base = baseline(root)
        print(f"{name}: baseline {base}", flush=True)
        for choice in ("logistic", "dense", "auto"):
            m = head(root, args.work, name, choice)
            accuracy = m["test"]["song_accuracy"]
            rows.append((name, base, choice, m.get("head"), accuracy, m["valid"]["songs"],
                         m["seconds"]))
            print(f"{name}: --head {choice} -> {m.get('head')}: test {accuracy}, "
                  f"{m['valid']['songs']} validation songs, {m['seconds']:.0f} s", flush=True)
    print("\n| catalog | train/test songs | baseline LR (patches, mean) | baseline LR (pooled) "
          "| --head | kept | majority | mean | logodds | sequence | mean - baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, base, choice, kept, accuracy, _, _ in rows:
        cells = " | ".join(f"{accuracy.get(k, float('nan')):.3f}"
                           for k in ("majority", "mean", "logodds", "sequence"))
        print(f"| {name} | {base['train songs']}/{base['test songs']} | "
              f"{base['patches, mean']:.3f} | {base['pooled']:.3f} | {choice} | {kept} | {cells} "
              f"| {accuracy['mean'] - base['patches, mean']:+.3f} |")


if __name__ == "__main__":
    main()
