"""Catalog report benchmark: `genres report` on labels tables of N/4 and N songs.

Run quietly:  .venv/bin/python benchmarks/report_bench.py [--songs 1000000]

Each table holds two models' labels: model m1 from two runs (the second re-labels a tenth of
the songs, some to another genre, and fails a few), m2 from one run; 10 genres, probabilities
drawn at random. `genres report --since 1` runs as a fresh process with embedded Ray while
/proc is sampled: its time, the driver's peak RSS and the process tree's peak PSS, and the
growth from N/4 to N songs.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENRES = [f"genre{i}" for i in range(10)]
FILE_ROWS = 100_000


def build(root: pathlib.Path, songs: int) -> str:
    """A labels table of ``songs`` songs (see the module doc); its path."""
    from pipeline.storage.labels import LabelTable, label_rows

    table = LabelTable(str(root))
    table.create()
    rng = np.random.default_rng(19)
    runs = [("m1", "20261201T020000Z-aaaa0001", np.arange(songs)),
            ("m1", "20261202T020000Z-aaaa0002", rng.choice(songs, songs // 10, replace=False)),
            ("m2", "20261203T020000Z-aaaa0003", np.arange(songs))]
    for day, (model, run, ids) in enumerate(runs, start=1):
        adds = []
        for start in range(0, len(ids), FILE_ROWS):
            chunk = ids[start:start + FILE_ROWS]
            n = len(chunk)
            logits = rng.normal(size=(n, len(GENRES))).astype(np.float32) * 2
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            failed = rng.random(n) < 0.002
            batch = {"song_id": np.array([f"song{i:08d}" for i in chunk], dtype=object),
                     "uri": np.array([f"s3://catalog/song{i:08d}.ogg" for i in chunk],
                                     dtype=object),
                     "error": np.where(failed, "decode", "").astype(object),
                     "message": np.where(failed, "bad file", "").astype(object),
                     "genre": np.array(GENRES, dtype=object)[probs.argmax(axis=1)],
                     "confidence": probs.max(axis=1), "n_frames": np.full(n, 12, np.int32),
                     "probabilities": probs}
            rows = label_rows(batch, classes=GENRES, top_k=3, aggregator="mean",
                              scored_at=datetime.datetime(2026, 12, day,
                                                          tzinfo=datetime.timezone.utc),
                              run_id=run)
            adds.append(table.write(rows, model_id=model, name=f"part-{run}-{start:09d}"))
        table.log.commit(adds, version=table.log.version(), run_id=run)
    return table.root


def main(argv=None):
    from score_bench import run  # the /proc sampling of the scoring benchmark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    genres = str(pathlib.Path(sys.executable).parent / "genres")
    results = {}
    with tempfile.TemporaryDirectory(prefix="genres-report-bench-") as tmp:
        for n in (args.songs // 4, args.songs):
            labels = build(pathlib.Path(tmp) / f"labels-{n}", n)
            r = run([genres, "report", labels, "--out", f"{tmp}/report-{n}.html", "--json",
                     f"{tmp}/report-{n}.json", "--since", "1"], summary=("report:",))
            results[n] = r
            print(f"{n:>9} songs ({n * 2 + n // 10} rows): {r['seconds']:6.1f} s, driver peak "
                  f"RSS {r['driver'] / 2**20:6.0f} MiB, tree peak PSS {r['pss'] / 2**20:6.0f} "
                  f"MiB | {r['summary']}", flush=True)
    small, large = results[args.songs // 4], results[args.songs]
    print(f"4x the songs: driver peak RSS {large['driver'] / small['driver']:.2f}x, tree peak "
          f"PSS {large['pss'] / small['pss']:.2f}x, time {large['seconds'] / small['seconds']:.2f}x")


if __name__ == "__main__":
    main()
