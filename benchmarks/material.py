"""Benchmark material that looks like a soundtrack catalog, made from GTZAN-3 excerpts.

Users' catalogs are long tracks at 44.1/48 kHz stereo, mostly Ogg Vorbis with some Opus, and
a tagger samples a window from an offset into each. ``soundtrack_catalog`` builds such tracks
(not committed: made once into a cache folder): each concatenates 4-12 random 30 s excerpts
(2-6 minutes), the right channel a different mix of the same music than the left, encoded as

- 44,100 Hz stereo Ogg Vorbis (about 3 in 4 tracks), by libsndfile's libvorbis (quality 0.5);
- 48,000 Hz stereo Ogg Vorbis, the same way;
- 48,000 Hz stereo Ogg Opus, by PyAV's libopus (128 kbit/s).

Vorbis goes through libsndfile because PyAV's wheel has only FFmpeg's experimental native
Vorbis encoder, which no real catalog is made with.

    .venv/bin/python benchmarks/material.py [--tracks 128] [--out /tmp/genres-bench/soundtrack]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
GTZAN3 = ROOT.parent / "shared" / "data" / "gtzan3"
KINDS = (("vorbis44k", 44100, "ogg"), ("vorbis48k", 48000, "ogg"), ("opus48k", 48000, "opus"))


def plan(n_tracks: int, excerpts: list[str], seed: int = 18) -> list[tuple[str, int, str, list]]:
    """(file name, rate, codec, excerpt paths) per track: 3 in 4 tracks 44.1 kHz Vorbis, the
    rest alternately 48 kHz Vorbis and Opus; 4-12 excerpts each."""
    rng = np.random.default_rng(seed)
    tracks = []
    for i in range(n_tracks):
        kind = KINDS[0] if i % 4 else KINDS[1 + (i // 4) % 2]
        picked = rng.choice(len(excerpts), size=int(rng.integers(4, 13)), replace=False)
        tracks.append((f"track{i:03d}-{kind[0]}.{kind[2]}", kind[1], kind[2],
                       [excerpts[j] for j in picked]))
    return tracks


def make_track(task) -> str:
    """Encode one planned track into ``out``; its path (kept when it is already there)."""
    (name, rate, codec, parts), out = task
    target = out / name
    if target.exists():
        return str(target)
    import soundfile as sf
    import soxr

    mono = np.concatenate([soxr.resample(sf.read(p, dtype="float32")[0], 22050, rate)
                           for p in parts])
    # a stereo image: the right channel leads the left by 0.3 ms and is mixed with the
    # excerpt order reversed, so a downmix is not just one channel
    right = 0.7 * np.roll(mono, -int(3e-4 * rate)) + 0.3 * mono[::-1]
    stereo = np.ascontiguousarray(np.stack([mono, right], axis=1) * 0.8, dtype=np.float32)
    partial = out / f".{name}.partial"
    if codec == "ogg":
        # in blocks: one large write crashes libsndfile 1.2's Vorbis encoder (a segfault)
        with sf.SoundFile(partial, "w", rate, 2, format="OGG", subtype="VORBIS") as f:
            for start in range(0, stereo.shape[0], rate):
                f.write(stereo[start:start + rate])
    else:
        _write_opus(partial, stereo, rate)
    os.replace(partial, target)
    return str(target)


def _write_opus(path: pathlib.Path, stereo: np.ndarray, rate: int) -> None:
    import av

    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="stereo")
        stream.bit_rate = 128_000
        step = 48000
        for start in range(0, stereo.shape[0], step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(stereo[start:start + step].T), format="fltp",
                layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def soundtrack_catalog(out: pathlib.Path, n_tracks: int = 128, processes: int = 2) -> list[str]:
    """The paths of ``n_tracks`` soundtrack-like tracks in ``out`` (made where missing)."""
    excerpts = sorted(str(p) for p in GTZAN3.glob("*/*.ogg"))
    if not excerpts:
        sys.exit(f"benchmark data not found at {GTZAN3}")
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(track, out) for track in plan(n_tracks, excerpts)]
    if all((out / t[0][0]).exists() for t in tasks):
        return [str(out / t[0][0]) for t in tasks]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.map(make_track, tasks, chunksize=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=128)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "genres-bench",
                                                      "soundtrack"))
    args = parser.parse_args(argv)
    paths = soundtrack_catalog(pathlib.Path(args.out), args.tracks)
    import soundfile as sf

    lengths = [sf.info(p).duration for p in paths]
    print(f"{len(paths)} tracks in {args.out}: {sum(lengths) / 3600:.2f} h, median "
          f"{np.median(lengths) / 60:.1f} min, {min(lengths):.0f}-{max(lengths):.0f} s")


if __name__ == "__main__":
    main()
