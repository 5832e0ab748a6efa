"""musicnn embedding throughput: serial per core, and `genres extract --features musicnn` on Ray.

Run quietly:  .venv/bin/python benchmarks/embed_bench.py [--songs 40]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "gtzan3"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=40)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.path.insert(0, str(ROOT))
    from threadpoolctl import threadpool_limits

    from pipeline.extract import embed_song, pretrained_musicnn
    from pipeline.features.spec import EmbeddingSpec
    from pipeline.runtime.extract import run_extract
    from pipeline.storage.catalog import Song
    from pipeline.storage.weights import weights_hash

    paths = sorted(str(p) for p in SHARED.glob("*/*.ogg"))[:: 300 // args.songs][: args.songs]
    spec = EmbeddingSpec(weights=weights_hash())
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    pretrained_musicnn("MSD")
    embed_song(Song("warm", paths[0]), spec)
    audio = 0.0
    started = time.perf_counter()
    with threadpool_limits(1):
        for path in paths:
            audio += embed_song(Song(path, path), spec)["audio_seconds"]
    serial = time.perf_counter() - started
    print(f"serial, 1 thread: {len(paths)} songs, {audio / 60:.1f} min audio, {serial:.1f} s, "
          f"{audio / serial:.0f}x realtime per core", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        manifest = pathlib.Path(tmp) / "m.csv"
        manifest.write_text("uri\n" + "".join(f"{p}\n" for p in paths))
        summary = run_extract(str(manifest), f"{tmp}/emb", spec)
        up = summary["seconds"] - summary.get("ray_start_s", 0)
        print(f"genres extract on local Ray ({os.cpu_count()} CPUs): {summary['seconds']:.1f} s "
              f"({audio / summary['seconds']:.0f}x realtime), {up:.1f} s once Ray is up "
              f"({audio / up:.0f}x realtime; includes TensorFlow start in each worker)")
        shutil.rmtree(f"{tmp}/emb", ignore_errors=True)


if __name__ == "__main__":
    main()
