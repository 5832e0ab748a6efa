"""What oneDNN's custom ops change for training on this CPU: one Keras epoch, on vs off.

TensorFlow turns them on by default only on CPUs with AVX512-VNNI/BF16, AVX-VNNI or AMX, so the
same bundle trains on different kernels on different servers. Each setting runs in a fresh
process (TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import) on the same random frames;
the figure is the fastest epoch after a warm-up epoch, and the ratio is on / off.

    .venv/bin/python benchmarks/onednn_bench.py [--models cnn2d cnn1d dnn] [--frames 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SHAPES = {"cnn2d": (128, 216), "cnn1d": (20, 216), "cnn1d_mel100ms": (128, 216),
          "dnn": (20, 216)}


def one_setting(model_name: str, frames: int, epochs: int, batch_size: int) -> dict:
    """Run in the child: fit ``epochs`` epochs of random frames, return seconds per epoch."""
    import time

    import numpy as np

    from pipeline.models.cnn import build_model
    from pipeline.models.keras import onednn_enabled, tf_keras

    keras = tf_keras()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((frames, *SHAPES[model_name])).astype(np.float32)
    y = rng.integers(0, 3, frames)
    model = build_model(model_name, SHAPES[model_name], 3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    seconds = []
    for _ in range(epochs + 1):  # the first epoch traces the graph
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    model.predict(x, batch_size=64, verbose=0)
    return {"onednn": onednn_enabled(), "epoch_s": min(seconds[1:]),
            "predict_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn2d", "cnn1d", "dnn"],
                        choices=sorted(SHAPES))
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_setting(args.child, args.frames, args.epochs, args.batch_size)))
        return
    print(f"{'model':<16}{'oneDNN off s/epoch':>20}{'on s/epoch':>12}{'on/off':>8}"
          f"{'predict on/off':>16}")
    for name in args.models:
        runs = {}
        for setting in ("0", "1"):
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_USE_LEGACY_KERAS": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "3"}
            out = subprocess.run([sys.executable, __file__, "--child", name,
                                  "--frames", str(args.frames), "--epochs", str(args.epochs),
                                  "--batch-size", str(args.batch_size)],
                                 env=env, check=True, capture_output=True, text=True)
            runs[setting] = json.loads(out.stdout.strip().splitlines()[-1])
            if runs[setting]["onednn"] is not (setting == "1"):
                raise SystemExit(f"TF_ENABLE_ONEDNN_OPTS={setting} did not take effect")
        off, on = runs["0"], runs["1"]
        print(f"{name:<16}{off['epoch_s']:>20.2f}{on['epoch_s']:>12.2f}"
              f"{on['epoch_s'] / off['epoch_s']:>8.2f}{on['predict_s'] / off['predict_s']:>16.2f}")


if __name__ == "__main__":
    main()
