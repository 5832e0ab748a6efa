"""Catalog-scale benchmark: what a first extraction and the nightly tags cost the driver and
the clock on catalogs of N and 4N songs whose files never arrive.

    .venv/bin/python benchmarks/catalog_bench.py [--songs 250000] [--factor 4] [--new 10]
        [--skip-extract] [--folder absent|empty]

For each size the catalog is a manifest of N rows whose files do not exist (each try of one
is a ``missing`` error, retried on the schedule of ``pipeline.retry``) plus ``--new`` real
songs. The missing files' folder is not there (``--folder absent``: one stat per batch finds
them all missing) or there and empty (``--folder empty``: a stat per file). Each command runs as a fresh process with embedded Ray, on a clock set by GENRES_NOW
(so one benchmark plays several nights), while /proc is sampled: the driver's peak RSS, the
process tree's peak PSS, and wall time.

- extract, first: the N rows (the backfill: every song tried once);
- extract, incremental: 10 hours later, N + new rows (nothing is due yet);
- tag, nights 1-3: N + new rows, a day apart, with a small model (dnn, 1 epoch on synthesised
  songs): night 1 tries every song, night 2 the N missing files again (due after 20 h),
  night 3 none (the second try waits 40 h);
- tag, no errors: the same catalog in a labels table where every old song failed for good on
  night 1 (``--max-attempts 1``: kind ``gone``), its night 2: what a catalog whose old songs
  are all accounted for costs;
- tag, labelled + new: a labels table that already holds a label of this model for each of
  the N old songs (rows copied from a real label, committed as a run commits), and the
  ``--new`` real songs to label: the nightly run of a catalog whose songs were all tagged
  (issue 37's "10 new songs on a 250k catalog").
Printed: every run, and the ratios 4N / N of the driver's peak RSS and of the wall time
(targets: a first extraction's driver <= 1.3x; night 2's driver <= 1.3x and time <= 1.5x),
and night 3 against the catalog without errors.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from score_bench import run  # the same /proc sampling as the other benchmarks

ROOT = pathlib.Path(__file__).resolve().parents[1]
START = datetime.datetime(2026, 12, 1, 2, 30, tzinfo=datetime.timezone.utc)


def manifest(path: pathlib.Path, n: int, new: list[str], folder: str,
             prefix: str = "new") -> pathlib.Path:
    """A manifest of ``n`` rows of files in ``folder`` that do not exist, then the files
    ``new`` (song ids ``prefix/0``, ...)."""
    ids = [f"missing/{i:08d}" for i in range(n)]
    uris = [f"{folder}/{i:08d}.ogg" for i in range(n)]
    pcsv.write_csv(pa.table({"uri": uris + new, "song_id": ids + [f"{prefix}/{i}" for i in
                                                                   range(len(new))]}), path)
    return path


def labelled(labels: pathlib.Path, n: int, folder: str) -> None:
    """Add to the labels table ``labels`` (one with a real label in it) a label for each of
    the ``n`` manifest songs of :func:`manifest`: copies of that label under their song ids,
    in files of 2,000 songs committed at once, as a scoring run writes them."""
    from pipeline.storage.delta import new_run_id
    from pipeline.storage.labels import FILE_SCHEMA, LabelTable

    table = LabelTable(str(labels))
    rows = table.log.table().to_pyarrow_table()
    one = rows.filter(pc.is_null(rows.column("error"))).slice(0, 1)
    model_id = one.column("model_id")[0].as_py()
    copies = one.select(FILE_SCHEMA.names).take([0] * n)
    copies = copies.set_column(0, "song_id", pa.array([f"missing/{i:08d}" for i in range(n)]))
    copies = copies.set_column(1, "uri", pa.array([f"{folder}/{i:08d}.ogg" for i in range(n)]))
    run_id = new_run_id()
    per_file = 2000  # as a scoring run writes them (pipeline.runtime.score._FILE_SONGS)
    adds = [table.write(copies.slice(start, per_file), model_id=model_id,
                        name=f"bench-{run_id}-{start // per_file:05d}")
            for start in range(0, n, per_file)]
    table.log.commit(adds, version=table.log.version(), run_id=run_id)


def at(hours: float, command: list[str], stage: str) -> dict:
    """``command`` run as if ``hours`` after the benchmark's start."""
    os.environ["GENRES_NOW"] = (START + datetime.timedelta(hours=hours)).isoformat()
    try:
        return run(command, summary=(f"{stage}:",))
    finally:
        del os.environ["GENRES_NOW"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=250_000, help="N")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--new", type=int, default=10, help="new real songs per incremental run")
    parser.add_argument("--skip-extract", action="store_true", help="the tag nights only")
    parser.add_argument("--folder", choices=("absent", "empty"), default="absent",
                        help="the missing files' folder: not there (one stat finds all its "
                             "files missing), or there and empty (a stat per file)")
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
        wavs = sorted(str(p) for p in (tmp / "songs").rglob("*.wav"))
        new, spare = wavs[:args.new], wavs[args.new:]
        model = ["--model", str(tmp / "model")]
        results = {}
        folder = "/nonexistent" if args.folder == "absent" else str(tmp / "empty")
        (tmp / "empty").mkdir()
        for label, n in (("N", args.songs), (f"{args.factor}N", args.factor * args.songs)):
            old, both = manifest(tmp / f"old-{label}.csv", n, [], folder), \
                manifest(tmp / f"both-{label}.csv", n, new, folder)
            features, labels, plain, tagged = (str(tmp / f"{k}-{label}") for k in (
                "features", "labels", "no-errors", "tagged"))
            runs = {} if args.skip_extract else {
                "extract, first": at(0, [genres, "extract", str(old), "--out", features],
                                     "extract"),
                "extract, incremental": at(10, [genres, "extract", str(both), "--out",
                                                features], "extract"),
            }
            runs.update({
                **{f"tag, night {night + 1}": at(24 * night, [genres, "tag", str(both), *model,
                                                              "--out", labels], "tag")
                   for night in range(3)},
                "tag, no errors, night 1": at(0, [genres, "tag", str(both), *model, "--out",
                                                  plain, "--max-attempts", "1"], "tag"),
                "tag, no errors, night 2": at(24, [genres, "tag", str(both), *model, "--out",
                                                   plain, "--max-attempts", "1"], "tag"),
            })
            # a real label to copy, of a song that is not among the new ones
            spares = manifest(tmp / "spare.csv", 0, spare, folder, "spare")
            at(0, [genres, "tag", str(spares), *model, "--out", tagged], "tag")
            labelled(pathlib.Path(tagged), n, folder)
            runs["tag, labelled + new"] = at(24, [genres, "tag", str(both), *model, "--out",
                                                  tagged], "tag")
            for name, r in runs.items():
                results[name, label] = r
                print(f"{name:24s} {label:>3} ({n:,} songs): {r['seconds']:7.1f} s, driver peak "
                      f"RSS {r['driver'] / 2**20:5.0f} MiB, tree peak PSS "
                      f"{r['pss'] / 2**20:6.0f} MiB | {r['summary'][:150]}", flush=True)
        big = f"{args.factor}N"
        for name, goal in (("extract, first", "driver <= 1.3x"),
                           ("extract, incremental", ""),
                           ("tag, night 2", "driver <= 1.3x, time <= 1.5x"),
                           ("tag, night 3", ""), ("tag, no errors, night 2", ""),
                           ("tag, labelled + new", "")):
            if (name, "N") not in results:
                continue
            small, large = results[name, "N"], results[name, big]
            print(f"{name}: {args.factor}x the catalog -> driver peak RSS "
                  f"{large['driver'] / small['driver']:.2f}x, time "
                  f"{large['seconds'] / small['seconds']:.2f}x, tree peak PSS "
                  f"{large['pss'] / small['pss']:.2f}x" + (f" (target: {goal})" if goal else ""),
                  flush=True)
        for label in ("N", big):
            third, plain = results["tag, night 3", label], results["tag, no errors, night 2", label]
            print(f"{label}: night 3 (nothing due) against a catalog without errors: time "
                  f"{third['seconds'] / plain['seconds']:.2f}x, driver "
                  f"{third['driver'] / plain['driver']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
