"""Which musicnn layers a linear model can use on a catalog: logistic regressions per layer.

Run quietly:  .venv/bin/python benchmarks/layers_bench.py [--manifest M] [--offset 30 --seconds 60]
                 [--cache FILE]   (GTZAN-3: --manifest ../shared/data/gtzan3/manifest.csv
                                   --offset 0 --seconds 30 --cache /tmp/genres-bench/gtzan3.npz)

Runs musicnn's MSD and MTT networks over every song of a manifest (default: the game-music
catalog of ``benchmarks/game_music.py``) in this process, one thread, and keeps each patch's
penultimate (200), taggram (50), mean_pool and max_pool (753 each) outputs in a cache file.
Then fits scikit-learn's logistic regression on the train songs for each set of layers, per
patch (a song = the mean of its patches' probabilities) and pooled per song (mean and std over
its patches), at two L2 strengths, and prints test song accuracy.
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LAYERS = {"pen": "penultimate", "tag": "taggram", "mean": "mean_pool", "max": "max_pool"}
SETS = [["MSD_pen"], ["MSD_tag"], ["MSD_mean", "MSD_max"], ["MTT_pen"], ["MTT_mean", "MTT_max"],
        ["MSD_pen", "MTT_pen"], ["MSD_tag", "MTT_tag"],
        ["MSD_mean", "MSD_max", "MTT_mean", "MTT_max"]]


def outputs(manifest: pathlib.Path, cache: pathlib.Path, offset: float, seconds: float):
    """Every patch's layer outputs of both networks, with its song, label and split."""
    if cache.exists():
        return dict(np.load(cache))
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    from pipeline.errors import AudioError
    from pipeline.extract import musicnn_input, pretrained_musicnn
    from pipeline.features.spec import EmbeddingSpec
    from pipeline.storage.catalog import Song

    tf.config.threading.set_intra_op_parallelism_threads(1)
    spec = EmbeddingSpec(offset_seconds=offset, max_seconds=seconds)
    nets = {name: pretrained_musicnn(name) for name in ("MSD", "MTT")}
    out: dict = {"song": [], "label": [], "split": []}
    started = time.perf_counter()
    for row in csv.DictReader(open(manifest)):
        try:
            song = Song(row["uri"], str(manifest.parent / row["uri"]), label=row["label"])
            patches = musicnn_input(song, spec)["patches"]
        except AudioError as e:
            print(f"skipped {row['uri']}: {e}", file=sys.stderr)
            continue
        for key in ("song", "label", "split"):
            out[key] += [row["uri" if key == "song" else key]] * len(patches)
        for name, net in nets.items():
            predicted = net.predict(patches, batch_size=32, verbose=0)
            for short, layer in LAYERS.items():
                out.setdefault(f"{name}_{short}", []).append(predicted[layer])
    print(f"networks: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    out = {k: np.concatenate(v) if k[:3] in ("MSD", "MTT") else np.array(v) for k, v in out.items()}
    np.savez(cache, **out)
    return out


def accuracy(d: dict, keys: list[str], *, pooled: bool, c: float) -> float:
    """Test song accuracy of a logistic regression on the layers ``keys``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([d[k] for k in keys], axis=1).astype(np.float64)
    song, label, split = d["song"], d["label"], d["split"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=c))
    ids = sorted(set(song))
    rows = {s: song == s for s in ids}
    y = np.array([label[rows[s]][0] for s in ids])
    side = np.array([split[rows[s]][0] for s in ids])
    if pooled:
        x = np.stack([np.concatenate([x[rows[s]].mean(0), x[rows[s]].std(0)]) for s in ids])
        model.fit(x[side == "train"], y[side == "train"])
        return float((model.predict(x[side == "test"]) == y[side == "test"]).mean())
    model.fit(x[split == "train"], label[split == "train"])
    test = [s for s in ids if split[rows[s]][0] == "test"]
    guess = [model.classes_[model.predict_proba(x[rows[s]]).mean(0).argmax()] for s in test]
    return float(np.mean([g == label[rows[s]][0] for g, s in zip(guess, test)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=pathlib.Path,
                        default=pathlib.Path("/tmp/genres-bench/game-music/manifest.csv"))
    parser.add_argument("--offset", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cache", type=pathlib.Path, default=None,
                        help="the networks' outputs (default: layers.npz beside the manifest)")
    args = parser.parse_args(argv)
    if not args.manifest.exists():
        from game_music import build

        args.manifest = build(args.manifest.parent)
    d = outputs(args.manifest, args.cache or args.manifest.with_name("layers.npz"), args.offset,
                args.seconds)
    print("| layers | patches C=1 | patches C=0.01 | pooled C=1 | pooled C=0.01 |")
    print("|---|---|---|---|---|")
    for keys in SETS:
        cells = [accuracy(d, keys, pooled=p, c=c) for p in (False, True) for c in (1.0, 0.01)]
        print(f"| {' + '.join(keys)} | " + " | ".join(f"{v:.3f}" for v in cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
