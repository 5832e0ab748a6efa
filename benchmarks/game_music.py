"""A labelled catalog of game music from Debian's packages: label = game, fixed 70/30 split.

Run:  .venv/bin/python benchmarks/game_music.py [--work DIR]   (prints the manifest path)

The music of seven games (Ogg Vorbis tracks of over 300 kB under a ``music`` folder, so no
jingles or sound effects) is downloaded with ``apt-get download`` from Debian's archive and
unpacked under ``DIR`` (default ``/tmp/genres-bench/game-music``, not committed; ~1.6 GB of
packages, ~0.5 GB of music kept). A track's split is a hash of its file name: ~70 % train,
~30 % test, the same on every machine. Composer and album identity, not genre, tell the
games apart: a harder catalog than GTZAN-3, like the in-house taxonomies label teams bring.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import pathlib
import re
import subprocess
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
GAMES = {"extremetuxracer": "extremetuxracer-data", "freedroidrpg": "freedroidrpg-data",
         "hedgewars": "hedgewars-data", "megaglest": "megaglest-data",
         "supertux": "supertux-data", "supertuxkart": "supertuxkart-data",
         "wesnoth": "wesnoth-1.16-music"}
MIN_BYTES = 300_000  # shorter files are jingles and stingers
TEST_SHARE = 0.3


def split_of(name: str) -> str:
    """``test`` for ~30 % of file names, else ``train`` (a hash: the same everywhere)."""
    unit = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2 ** 64
    return "test" if unit < TEST_SHARE else "train"


def music_members(deb: pathlib.Path) -> tarfile.TarFile:
    """The data tar of a .deb, opened as a stream (``dpkg-deb --fsys-tarfile``)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    return tarfile.open(fileobj=proc.stdout, mode="r|")


def build(work: pathlib.Path) -> pathlib.Path:
    """Download, unpack and list the catalog under ``work``; the manifest's path."""
    debs, music = work / "debs", work / "music"
    debs.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.csv"
    if manifest.exists():
        return manifest
    missing = [p for p in GAMES.values() if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    rows = []
    for game, package in GAMES.items():
        deb = next(debs.glob(f"{package}_*.deb"))
        with music_members(deb) as tar:
            for member in tar:
                if not (member.isfile() and member.size > MIN_BYTES
                        and re.search(r"/music/.+\.ogg$", member.name, re.I)):
                    continue
                # music/antarctic/cave.ogg -> antarctic-cave.ogg (folders of one game)
                inner = re.split(r"/music/", member.name, flags=re.I)[-1]
                target = music / game / inner.replace("/", "-")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                rows.append({"uri": str(target.relative_to(work)), "label": game,
                             "split": split_of(f"{game}/{target.name}")})
    rows.sort(key=lambda r: r["uri"])
    with open(manifest.with_suffix(".tmp"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uri", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    manifest.with_suffix(".tmp").rename(manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=pathlib.Path,
                        default=pathlib.Path("/tmp/genres-bench/game-music"))
    args = parser.parse_args(argv)
    manifest = build(args.work.resolve())
    counts: dict = {}
    with open(manifest) as f:
        for row in csv.DictReader(f):
            counts.setdefault(row["label"], {"train": 0, "test": 0})[row["split"]] += 1
    for game, c in sorted(counts.items()):
        print(f"{game:>16}: {c['train']:3d} train, {c['test']:3d} test", file=sys.stderr)
    print(manifest)


if __name__ == "__main__":
    main()
