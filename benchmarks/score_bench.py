"""Scoring benchmark: does `genres score` scale with the catalog, not with memory?

Run quietly (nothing else on the machine), with a trained bundle:

    .venv/bin/python benchmarks/score_bench.py --model MODEL [--songs 100] [--factor 4] [--repeat 1]

It builds catalogs of N and factor x N songs from GTZAN-3 (hard links of the real files under
new names, so every song is a distinct file and song_id), then for each runs, as a fresh
process with its own embedded Ray:
  score    `genres score CATALOG --model MODEL`
  extract  `genres extract CATALOG` with the bundle's feature settings (the baseline: decoding
           and features alone, no model)
and samples the whole process tree (driver, raylet, workers, actors) every 0.25 s from /proc
(Linux): peak resident memory as the sum of PSS (shared pages split between the processes that
map them, so the object store is counted once) and as the sum of RSS. It prints wall times,
peaks and the ratios the targets are about.
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
SHARED = ROOT.parent / "shared" / "data" / "gtzan3"


def make_catalog(folder: pathlib.Path, n: int) -> pathlib.Path:
    """A manifest of ``n`` songs: GTZAN-3 files hard-linked (or copied) under new names."""
    sources = sorted(SHARED.glob("*/*.ogg"))
    folder.mkdir(parents=True)
    lines = ["uri"]
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"{i:06d}-{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())
        lines.append(dst.name)
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes over ``root`` and all its descendants."""
    tree, todo, pss, rss = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return pss, rss


def _rss(pid: int) -> int:
    """Resident memory of one process, in bytes (0 once it has gone)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(args: list[str], summary: tuple[str, ...] = ("score:", "extract:"), *,
        memory: bool = True) -> dict:
    """Wall time, peak memory (the command's own RSS as ``driver``; the process tree's PSS and
    RSS) and the last output line starting with ``summary`` of one command. ``memory=False``
    leaves /proc alone: reading every process's PSS 4 times a second takes CPU from the
    command, which a timing against an unsampled baseline must not pay."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    peak = {"driver": 0, "pss": 0, "rss": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pss, rss = tree_memory(proc.pid)
            peak.update(driver=max(peak["driver"], _rss(proc.pid)), pss=max(peak["pss"], pss),
                        rss=max(peak["rss"], rss))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    output = proc.stdout.read()
    proc.wait()
    done.set()
    if memory:
        sampler.join()
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{output[-3000:]}")
    last = [line for line in output.splitlines() if line.startswith(summary)]
    return {"seconds": time.perf_counter() - started, **peak, "summary": last[-1] if last else ""}


def spec_flags(model: str) -> list[str]:
    """`genres extract` flags that reproduce the bundle's FeatureSpec."""
    from pipeline.storage.bundle import read_bundle

    record = json.loads((pathlib.Path(read_bundle(model).root) / "spec.json").read_text())
    if record.get("kind", "frames") != "frames":
        return ["--features", f"musicnn:{record['spec']['model']}"]
    spec = record["spec"]
    flags = ["--sample-rate", spec["sample_rate"], "--n-fft", spec["n_fft"], "--hop-length",
             spec["hop_length"], "--n-mels", spec["n_mels"], "--n-mfcc", spec["n_mfcc"],
             "--frame-seconds", spec["frame_seconds"], "--dtype", spec["dtype"]]
    if spec.get("hop_seconds"):
        flags += ["--hop-seconds", spec["hop_seconds"]]
    return [str(f) for f in flags]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle to score with")
    parser.add_argument("--songs", type=int, default=100, help="N (default 100)")
    parser.add_argument("--factor", type=int, default=4, help="the larger run is factor x N")
    parser.add_argument("--skip-extract", action="store_true", help="score only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each command this many times; report the fastest (a noisy "
                             "machine slows runs, it never speeds them up)")
    args = parser.parse_args()
    genres = str(pathlib.Path(sys.executable).parent / "genres")
    results = {}
    with tempfile.TemporaryDirectory(prefix="genres-score-bench-") as tmp:
        for n in (args.songs, args.factor * args.songs):
            manifest = make_catalog(pathlib.Path(tmp) / f"catalog-{n}", n)
            commands = {"score": [genres, "score", str(manifest), "--model", args.model,
                                  "--out", f"{tmp}/labels-{n}"]}
            if not args.skip_extract:
                commands["extract"] = [genres, "extract", str(manifest), "--out",
                                       f"{tmp}/features-{n}", *spec_flags(args.model)]
            results[n] = {}
            for _ in range(args.repeat):  # alternate the two, so drift hits both alike
                for kind, command in commands.items():
                    shutil.rmtree(command[command.index("--out") + 1], ignore_errors=True)
                    r = run(command)
                    best = results[n].setdefault(kind, r)
                    # fastest of the repeats, largest memory peak of them all
                    best.update(seconds=min(best["seconds"], r["seconds"]),
                                pss=max(best["pss"], r["pss"]), rss=max(best["rss"], r["rss"]))
            for kind, r in results[n].items():
                print(f"{n:6d} songs {kind:8s} {r['seconds']:7.1f} s  peak PSS "
                      f"{r['pss'] / 2**20:7.0f} MiB  peak RSS {r['rss'] / 2**20:7.0f} MiB  "
                      f"| {r['summary']}", flush=True)
    small, large = results[args.songs], results[args.factor * args.songs]
    print(f"\n{args.factor}x the songs ({args.songs} -> {args.factor * args.songs}), score: "
          f"time {large['score']['seconds'] / small['score']['seconds']:.2f}x "
          f"(target <= 4.4x), peak PSS {large['score']['pss'] / small['score']['pss']:.2f}x, "
          f"peak RSS {large['score']['rss'] / small['score']['rss']:.2f}x (target <= 1.3x)")
    if not args.skip_extract:
        for n, r in results.items():
            print(f"{n} songs: score / extract time {r['score']['seconds'] / r['extract']['seconds']:.2f}x "
                  f"(target <= 1.5x)")


if __name__ == "__main__":
    main()
