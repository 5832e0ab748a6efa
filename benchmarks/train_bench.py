"""Training benchmark: driver memory at N vs factor x N songs, and Ray Train vs plain Keras.

Run quietly (nothing else on the machine), with features of GTZAN-3 from `genres extract`:

    .venv/bin/genres extract ../shared/data/gtzan3/manifest.csv --out /tmp/gtzan3-features
    .venv/bin/python benchmarks/train_bench.py --features /tmp/gtzan3-features [--factor 4]
        [--throughput-copies 16] [--model cnn2d]

1. Memory: features of factor x N songs are the same parts under new song_ids (``copyK/``
   prefixes: no re-extraction). `genres train` runs 1 epoch on each as a fresh process with
   embedded Ray while /proc is sampled every 0.25 s: peak RSS of the driver alone, and of the
   whole process tree (sum of PSS, the object store counted once, and sum of RSS).
2. Throughput: on ``throughput-copies`` x N songs (`--split song`, so most are train songs),
   `genres train` (1 worker) for ``--epochs`` against plain Keras `fit` of the same model on
   the same train frames from memory in one process, validating on the same frames (the
   baseline); the fastest epoch after the first of each, in train frames per second per CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.shards import ERROR_SCHEMA, FeatureStore
from score_bench import run  # the same /proc sampling as the scoring benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]


def copy_features(src: pathlib.Path, dst: pathlib.Path, copies: int) -> pathlib.Path:
    """A feature directory of ``copies`` x the songs of ``src``: each part again under
    song_ids prefixed ``copyK/``, written and committed as extract writes parts."""
    source, store = FeatureStore(str(src)), FeatureStore(str(dst))
    store.prepare(source.read_spec())
    adds = []
    for k in range(copies):
        for part in source.parts():
            table = source.read_part(part)
            ids = pa.array([f"copy{k}/{s}" for s in table.column("song_id").to_pylist()],
                           pa.string())
            table = table.set_column(table.schema.get_field_index("song_id"), "song_id", ids)
            adds.append(store.write_part(f"{part}-copy{k}", table, ERROR_SCHEMA.empty_table(),
                                         run_id="train-bench"))
    store.commit(adds, run_id="train-bench")
    return dst


def keras_epochs(features: pathlib.Path, model_name: str, batch_size: int, epochs: int,
                 bundle: pathlib.Path) -> tuple[list[float], int]:
    """Plain Keras ``fit`` in this process on the train frames ``bundle`` was trained on,
    validating on its validation frames as the Ray Train epoch does, all read into memory
    first and fed by tf.data as a Train worker feeds its step (the baseline); seconds of
    each epoch and the train frames."""
    from pipeline.models.cnn import build_model, feature_column
    from pipeline.models.keras import tf_keras
    from pipeline.splits import split_rows
    from pipeline.storage.shards import tensor_values

    # The threads a Train worker runs with (pipeline.runtime.train_worker.worker_threads): Ray sets
    # OMP_NUM_THREADS=1 in its workers, and TensorFlow's pool takes every core. With Keras'
    # defaults on a CPU where oneDNN's custom ops are on (AVX512_VNNI), every baseline epoch
    # took ~150 s against Ray Train's ~110 s; with these threads its first took 95 s.
    os.environ["OMP_NUM_THREADS"] = "1"
    keras = tf_keras()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(len(os.sched_getaffinity(0)))
    from pipeline.storage.bundle import read_bundle

    bundle = pathlib.Path(read_bundle(str(bundle)).root)  # the current version's folder
    column = feature_column(model_name)
    config = json.loads((bundle / "config.json").read_text())
    classes = json.loads((bundle / "labels.json").read_text())
    norm = json.loads((bundle / "normalization.json").read_text())
    data = {"train": ([], []), "valid": ([], [])}
    for path in sorted(features.glob("part-*.parquet")):
        table = pq.read_table(path, columns=["song_id", "label", "artist", "split", column])
        splits = split_rows(table.column("song_id").to_pylist(), table.column("artist").to_pylist(),
                            table.column("split").to_pylist(), config["split_method"],
                            seed=config["seed"])
        x = tensor_values(table.column(column))
        labels = np.array(table.column("label").to_pylist(), dtype=object)
        for split, (xs, ys) in data.items():
            keep = splits == split
            xs.append(x[keep].astype(np.float32))
            ys.append(np.array([classes.index(c) for c in labels[keep]], np.int64))
    (x, y), valid = ((np.concatenate(xs), np.concatenate(ys)) for xs, ys in data.values())
    model = build_model(model_name, x.shape[1:], len(classes),
                        normalization=(norm["mean"], norm["std"]))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    # From memory through tf.data with the options the Train worker uses: a shuffle over
    # every frame, prefetch, autotuning off. Keras' own numpy path keeps autotuning on, and
    # deleting each epoch's iterator then waited on the autotune thread: its epochs 2-3 took
    # 149-152 s where its first took 95 s.
    no_autotune = tf.data.Options()
    no_autotune.autotune.enabled = False
    train = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0)
             .batch(batch_size).prefetch(8).with_options(no_autotune))
    valid = (tf.data.Dataset.from_tensor_slices(valid).batch(batch_size).prefetch(8)
             .with_options(no_autotune))
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(train, epochs=1, validation_data=valid, verbose=0)
        seconds.append(time.perf_counter() - started)
    return seconds, len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, type=pathlib.Path,
                        help="features of N songs (GTZAN-3 with its manifest split)")
    parser.add_argument("--model", default="cnn2d")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--throughput-copies", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="of each, for the throughput")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    genres = str(pathlib.Path(sys.executable).parent / "genres")
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="genres-train-bench-") as tmp:
        tmp = pathlib.Path(tmp)

        def train(features: pathlib.Path, name: str, *flags: str, memory: bool = True) -> dict:
            return run([genres, "train", str(features), "--model", args.model, "--out",
                        str(tmp / name), "--storage-path", str(tmp / "runs"), "--batch-size",
                        str(args.batch_size), *flags], summary=("train:",), memory=memory)

        if not args.skip_memory:
            big = copy_features(args.features, tmp / "features-big", args.factor)
            results = {}
            for name, features in (("N", args.features), (f"{args.factor}N", big)):
                results[name] = r = train(features, f"memory-{name}", "--epochs", "1",
                                          "--split", "manifest")
                print(f"{name:>4} songs: {r['seconds']:6.1f} s, driver peak RSS "
                      f"{r['driver'] / 2**20:6.0f} MiB, tree peak PSS {r['pss'] / 2**20:6.0f} MiB, "
                      f"tree peak RSS {r['rss'] / 2**20:6.0f} MiB | {r['summary']}", flush=True)
            small, large = results["N"], results[f"{args.factor}N"]
            print(f"{args.factor}x the songs: driver peak RSS "
                  f"{large['driver'] / small['driver']:.2f}x (target <= 1.3x), tree peak PSS "
                  f"{large['pss'] / small['pss']:.2f}x, tree peak RSS "
                  f"{large['rss'] / small['rss']:.2f}x, time "
                  f"{large['seconds'] / small['seconds']:.2f}x", flush=True)
            shutil.rmtree(big)
        if not args.skip_throughput:
            many = copy_features(args.features, tmp / "features-many", args.throughput_copies)
            r = train(many, "throughput", "--epochs", str(args.epochs), "--split", "song",
                      "--patience", str(args.epochs), memory=False)
            from pipeline.storage.bundle import read_bundle

            version = pathlib.Path(read_bundle(str(tmp / "throughput")).root)
            history = [row.split(",") for row in (version / "history.csv")
                       .read_text().splitlines()]
            seconds = [float(row[history[0].index("seconds")]) for row in history[1:]]
            steps = json.loads((version / "metrics.json").read_text())["workers"]
            ray_frames = steps["train_steps"] * steps["batch_per_worker"]
            keras, frames = keras_epochs(many, args.model, args.batch_size, args.epochs,
                                         tmp / "throughput")
            # The fastest epoch after the first (which traces the step function) of each: the
            # least disturbed by other load on a shared machine.
            ray_best, keras_best = min(seconds[1:]), min(keras[1:])
            ray_rate, keras_rate = ray_frames / ray_best / cpus, frames / keras_best / cpus
            print(f"throughput ({frames} train frames, fastest epoch after the first, {cpus} "
                  f"CPUs): Ray Train {ray_best:.1f} s, {ray_rate:.1f} frames/s/CPU; plain Keras "
                  f"{keras_best:.1f} s, "
                  f"{keras_rate:.1f} frames/s/CPU; Ray Train overhead "
                  f"{(keras_rate / ray_rate - 1) * 100:+.0f} % (target <= 20 %)", flush=True)
            print(f"  epoch seconds: Ray Train {['%.1f' % s for s in seconds]}, Keras "
                  f"{['%.1f' % s for s in keras]}; whole train command {r['seconds']:.0f} s")


if __name__ == "__main__":
    main()
