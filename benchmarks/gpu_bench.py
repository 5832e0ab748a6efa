"""GPU benchmark: training epochs CPU vs GPU, GPU utilisation, musicnn throughput, in one run.

Run on a machine with an NVIDIA GPU (``nvidia-smi`` on PATH), nothing else running:

    .venv/bin/python benchmarks/gpu_bench.py [--copies 8] [--epochs 3] [--songs 300]

It extracts GTZAN-3 frame features once (CPU), then prints:
1. train: `genres train --model cnn2d` on ``copies`` x GTZAN-3 (song split), the fastest
   epoch after the first of: CPU workers (one per 8 CPUs), one GPU worker (``--use-gpu``),
   and one GPU worker with XLA auto-clustering (``TF_XLA_FLAGS=--tf_xla_auto_jit=2``); frames
   per second and the GPU/CPU ratio;
2. GPU utilisation: mean and peak of ``nvidia-smi`` samples every 200 ms, and peak memory,
   while the GPU training ran and while `genres score --use-gpu` scored ``copies`` x GTZAN-3
   (against `genres score` on CPU, same songs);
3. musicnn: `genres extract --features musicnn` on GTZAN-3 on CPU and with ``--use-gpu``, in
   songs per second and times realtime, with the GPU utilisation of the GPU run.
Without a GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "gtzan3"


class GpuSampler:
    """``nvidia-smi`` utilisation (%) and memory (MiB) every ``every_ms`` while in a ``with``."""

    def __init__(self, every_ms: int = 200):
        self.every_ms = every_ms
        self.samples: list[tuple[float, float]] = []

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", f"-lms={self.every_ms}"],
            stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                util, memory = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, memory))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.reader.join(timeout=2)

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        utils = [u for u, _ in self.samples]
        return (f"GPU util mean {sum(utils) / len(utils):.0f} %, peak {max(utils):.0f} %, "
                f"memory peak {max(m for _, m in self.samples):.0f} MiB "
                f"({len(utils)} samples)")


def genres(*args: str, env: dict | None = None) -> float:
    """Seconds of one `genres` command (exits on failure with its output's tail)."""
    started = time.perf_counter()
    proc = subprocess.run([str(pathlib.Path(sys.executable).parent / "genres"), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode:
        sys.exit(f"genres {' '.join(args)} failed:\n{proc.stdout[-3000:]}")
    return time.perf_counter() - started


def epochs_of(bundle: pathlib.Path) -> tuple[list[float], int]:
    """(seconds of each epoch, train frames per epoch) from a bundle's history and metrics."""
    from pipeline.storage.bundle import read_bundle

    version = pathlib.Path(read_bundle(str(bundle)).root)
    rows = [row.split(",") for row in (version / "history.csv").read_text().splitlines()]
    seconds = [float(row[rows[0].index("seconds")]) for row in rows[1:]]
    workers = json.loads((version / "metrics.json").read_text())["workers"]
    return seconds, workers["train_steps"] * workers["batch_per_worker"] * workers["count"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8, help="x GTZAN-3 for train and score")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--songs", type=int, default=300, help="GTZAN-3 songs for musicnn")
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the CPU legs (the baselines; checks the script without a GPU)")
    args = parser.parse_args(argv)
    gpu = not args.cpu_only
    if gpu and shutil.which("nvidia-smi") is None:
        print("no GPU here (nvidia-smi not found): run this where one is, or with --cpu-only")
        return 2
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from train_bench import copy_features

    cpus = os.cpu_count()
    manifest = SHARED / "manifest.csv"
    with tempfile.TemporaryDirectory(prefix="genres-gpu-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        seconds = genres("extract", str(manifest), "--out", str(tmp / "features"))
        print(f"features: GTZAN-3 extracted in {seconds:.0f} s on {cpus} CPUs", flush=True)
        many = copy_features(tmp / "features", tmp / "many", args.copies)

        # 1-2. training, CPU against GPU
        common = ["--model", "cnn2d", "--epochs", str(args.epochs), "--patience",
                  str(args.epochs), "--split", "song", "--batch-size", str(args.batch_size),
                  "--storage-path", str(tmp / "runs")]
        runs = {}
        workers = str(max(1, cpus // 8))
        genres("train", str(many), "--out", str(tmp / "cpu"), "--num-workers", workers, *common)
        runs[f"CPU ({workers} worker(s), {cpus} CPUs)"] = epochs_of(tmp / "cpu")
        for name, env in (("GPU", {}), ("GPU + XLA", {"TF_XLA_FLAGS": "--tf_xla_auto_jit=2"}))[
                : 2 if gpu else 0]:
            with GpuSampler() as sampler:
                genres("train", str(many), "--out", str(tmp / name.replace(" ", "")),
                       "--num-workers", "1", "--use-gpu", *common, env=env)
            runs[name] = epochs_of(tmp / name.replace(" ", ""))
            print(f"train {name}: {sampler.summary()}", flush=True)
        base = min(next(iter(runs.values()))[0][1:] or next(iter(runs.values()))[0])
        for name, (epochs, frames) in runs.items():
            best = min(epochs[1:] or epochs)
            print(f"train {name}: epochs {['%.1f' % s for s in epochs]} s, fastest after the "
                  f"first {best:.1f} s, {frames / best:.0f} train frames/s, "
                  f"{base / best:.2f}x the CPU epoch", flush=True)

        # 2. scoring, CPU against GPU
        score_manifest = tmp / "score.csv"
        rows = manifest.read_text().splitlines()[1:]
        score_manifest.write_text("uri,song_id\n" + "".join(
            f"{SHARED / row.split(',')[0]},copy{k}/{i}\n" for k in range(args.copies)
            for i, row in enumerate(rows)))
        n = args.copies * len(rows)
        model = tmp / ("GPU" if gpu else "cpu")
        cpu_s = genres("score", str(score_manifest), "--model", str(model), "--out",
                       str(tmp / "labels-cpu"))
        print(f"score {n} songs: CPU {cpu_s:.1f} s ({n / cpu_s:.1f} songs/s)", flush=True)
        if gpu:
            with GpuSampler() as sampler:
                gpu_s = genres("score", str(score_manifest), "--model", str(model), "--out",
                               str(tmp / "labels-gpu"), "--use-gpu")
            print(f"score {n} songs: --use-gpu {gpu_s:.1f} s ({n / gpu_s:.1f} songs/s, "
                  f"{cpu_s / gpu_s:.2f}x the CPU); {sampler.summary()}", flush=True)

        # 3. musicnn embeddings, CPU against GPU
        paths = [SHARED / row.split(",")[0] for row in rows][: args.songs]
        songs = tmp / "musicnn.csv"
        songs.write_text("uri\n" + "".join(f"{p}\n" for p in paths))
        audio_s = 30.0 * len(paths)
        cpu_s = genres("extract", str(songs), "--features", "musicnn", "--out",
                       str(tmp / "emb-cpu"))
        print(f"musicnn {len(paths)} songs (~{audio_s / 60:.0f} min): CPU {cpu_s:.1f} s "
              f"({audio_s / cpu_s:.0f}x realtime; whole command, Ray and TensorFlow start "
              f"included)", flush=True)
        if gpu:
            with GpuSampler() as sampler:
                gpu_s = genres("extract", str(songs), "--features", "musicnn", "--use-gpu",
                               "--out", str(tmp / "emb-gpu"))
            print(f"musicnn --use-gpu {gpu_s:.1f} s ({audio_s / gpu_s:.0f}x realtime, "
                  f"{cpu_s / gpu_s:.2f}x the CPU); {sampler.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
