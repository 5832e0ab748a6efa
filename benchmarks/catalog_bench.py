"""Catalog-scale benchmark: what an incremental run costs the driver on catalogs of N and 4N
songs, of which all but a few new ones are already accounted for.

    .venv/bin/python benchmarks/catalog_bench.py [--songs 250000] [--factor 4] [--new 10]

For each size the catalog is a manifest of N rows whose files do not exist (so a first pass
is cheap: each becomes a ``missing`` error row) plus ``--new`` real songs:
1. ``genres extract`` of the N rows, then of the N + new rows (the incremental run);
2. ``genres tag`` of the N rows, then of the N + new rows, with a small model (dnn, 1 epoch on
   synthesised songs; its quality is beside the point).
Each command runs as a fresh process with embedded Ray while /proc is sampled: the driver's
peak RSS, the process tree's peak PSS, and wall time. Printed: the first and incremental runs
of each size, and the incremental run's ratios 4N / N (target: driver peak RSS <= 1.3x).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import pyarrow as pa
import pyarrow.csv as pcsv

from score_bench import run  # the same /proc sampling as the other benchmarks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def manifest(path: pathlib.Path, n: int, new: list[str]) -> pathlib.Path:
    """A manifest of ``n`` rows of files that do not exist, then the files ``new``."""
    ids = [f"missing/{i:08d}" for i in range(n)]
    uris = [f"/nonexistent/{i:08d}.ogg" for i in range(n)]
    pcsv.write_csv(pa.table({"uri": uris + new, "song_id": ids + [f"new/{i}" for i in
                                                                   range(len(new))]}), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=250_000, help="N")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--new", type=int, default=10, help="new real songs per incremental run")
    args = parser.parse_args()
    genres = str(pathlib.Path(sys.executable).parent / "genres")
    with tempfile.TemporaryDirectory(prefix="genres-catalog-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        from pipeline.demo import synthesise_catalog

        songs = pathlib.Path(synthesise_catalog(str(tmp / "songs"), songs_per_genre=4,
                                                seconds=12.0, seed=3))
        for step in (["extract", str(songs), "--out", str(tmp / "model-features")],
                     ["train", str(tmp / "model-features"), "--out", str(tmp / "model"),
                      "--model", "dnn", "--epochs", "1", "--split", "song",
                      "--storage-path", str(tmp / "runs")]):
            run([genres, *step], summary=("extract:", "train:"), memory=False)
        new = sorted(str(p) for p in (tmp / "songs").rglob("*.wav"))[:args.new]
        results = {}
        for label, n in (("N", args.songs), (f"{args.factor}N", args.factor * args.songs)):
            first = manifest(tmp / f"first-{label}.csv", n, [])
            again = manifest(tmp / f"again-{label}.csv", n, new)
            for stage, extra in (("extract", []), ("tag", ["--model", str(tmp / "model")])):
                out = str(tmp / f"{stage}-{label}")
                cold = run([genres, stage, str(first), "--out", out, *extra],
                           summary=(f"{stage}:",))
                warm = run([genres, stage, str(again), "--out", out, *extra],
                           summary=(f"{stage}:",))
                results[stage, label] = warm
                print(f"{stage:7s} {label:>3} ({n:,} songs): first run {cold['seconds']:6.1f} s, "
                      f"driver {cold['driver'] / 2**20:5.0f} MiB | incremental (+{args.new}) "
                      f"{warm['seconds']:6.1f} s, driver peak RSS {warm['driver'] / 2**20:5.0f} "
                      f"MiB, tree peak PSS {warm['pss'] / 2**20:6.0f} MiB | {warm['summary']}",
                      flush=True)
        for stage in ("extract", "tag"):
            small, large = results[stage, "N"], results[stage, f"{args.factor}N"]
            print(f"{stage}: {args.factor}x the catalog -> incremental run driver peak RSS "
                  f"{large['driver'] / small['driver']:.2f}x (target <= 1.3x), tree peak PSS "
                  f"{large['pss'] / small['pss']:.2f}x, time "
                  f"{large['seconds'] / small['seconds']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
