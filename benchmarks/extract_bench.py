"""Extraction benchmark: naive librosa in a 2-process pool vs `genres extract` on Ray.

Run quietly (nothing else on the machine):  .venv/bin/python benchmarks/extract_bench.py

For each material (GTZAN-3 22,050 Hz mono Ogg; the same songs re-encoded as 44,100 Hz stereo
Ogg Vorbis) it times, on the same songs and 5 s frames, MFCC 20 + log-mel 128:
  naive   librosa.load(sr=22050) + librosa.feature.mfcc + librosa.feature.melspectrogram,
          computed separately, in a 2-process pool (the baseline);
  decode  soundfile decode + downmix only, same pool (the floor);
  genres  run_extract on local Ray (2 CPUs), with and without Ray start-up.
and prints times, ratios and realtime factors, then a serial per-stage profile per song.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "gtzan3"
FRAME_S, SR = 5.0, 22050


def naive_song(path: str) -> float:
    """The baseline per song: returns the audio seconds processed."""
    import librosa

    y, sr = librosa.load(path, sr=SR)
    n = int(FRAME_S * sr)
    for start in range(0, len(y) - n + 1, n):
        frame = y[start:start + n]
        librosa.feature.mfcc(y=frame, sr=sr, n_mfcc=20)
        librosa.power_to_db(librosa.feature.melspectrogram(y=frame, sr=sr, n_mels=128))
    return len(y) / sr


def decode_song(path: str) -> float:
    import soundfile as sf

    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return len(y.mean(axis=1)) / sr


def pool_run(fn, paths, processes=2):
    """Seconds for ``fn`` over ``paths`` in a warm pool (imports and JIT paid before timing)."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(fn, paths[:processes], chunksize=1)
        started = time.perf_counter()
        seconds = sum(pool.map(fn, paths, chunksize=4))
        return time.perf_counter() - started, seconds


def make_stereo_44k(paths, out: pathlib.Path) -> list[str]:
    """Re-encode songs as 44.1 kHz stereo Ogg Vorbis (a little inter-channel delay)."""
    import soundfile as sf
    import soxr

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for path in paths:
        target = out / (pathlib.Path(path).stem + ".ogg")
        if not target.exists():
            y, sr = sf.read(path, dtype="float32")
            y = soxr.resample(y, sr, 44100)
            stereo = np.stack([y, np.roll(y, 7) * 0.9], axis=1)
            sf.write(target, stereo, 44100, format="OGG", subtype="VORBIS")
        made.append(str(target))
    return made


def genres_run(paths, workdir: pathlib.Path):
    """Times (ray start, extract once Ray is up) and the summary of run_extract over ``paths``."""
    sys.path.insert(0, str(ROOT))
    from pipeline.features import FeatureSpec
    from pipeline.runtime.extract import run_extract
    from pipeline.runtime.session import init_ray

    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "manifest.csv"
    manifest.write_text("uri,song_id\n" + "".join(f"{p},{i}\n" for i, p in enumerate(paths)))
    out = workdir / "features"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    init_ray(None)
    t1 = time.perf_counter()
    summary = run_extract(str(manifest), str(out), FeatureSpec(frame_seconds=FRAME_S))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, summary


def profile(paths, n=8):
    """Serial per-stage seconds per song: decode, resample, STFT, mel, dB + DCT, write."""
    import pyarrow as pa
    import soundfile as sf
    import soxr

    from pipeline.features import FeatureSpec, frame_audio
    from pipeline.features.frames import _mel_basis, power_spectrogram
    from pipeline.storage.shards import _parquet_bytes, tensor_array
    import scipy.fft

    spec = FeatureSpec(frame_seconds=FRAME_S)
    stages = {k: 0.0 for k in ("decode", "resample", "stft", "mel", "db_dct", "write")}
    for i, path in enumerate([paths[0]] + paths[:n]):  # the first run warms caches
        if i == 1:
            stages = dict.fromkeys(stages, 0.0)
        t = time.perf_counter()
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        stages["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        k = sr // SR if sr % SR == 0 else 1
        if k == 1 and sr != SR:
            y = soxr.resample(y, sr, SR)
            sr = SR
        stages["resample"] += time.perf_counter() - t
        frames, _, _ = frame_audio(y, spec=spec, sample_rate=sr)
        t = time.perf_counter()
        power = power_spectrogram(np.ascontiguousarray(frames), n_fft=k * spec.n_fft,
                                  hop_length=k * spec.hop_length)
        stages["stft"] += time.perf_counter() - t
        t = time.perf_counter()
        basis = _mel_basis(sr, k * spec.n_fft, spec.n_mels, SR / 2)
        mel = power[..., : basis.shape[1]] @ basis.T
        stages["mel"] += time.perf_counter() - t
        t = time.perf_counter()
        logmel = 10 * np.log10(np.maximum(mel, 1e-10)).transpose(0, 2, 1)
        mfcc = scipy.fft.dct(logmel, type=2, norm="ortho", axis=1)[:, :20]
        stages["db_dct"] += time.perf_counter() - t
        t = time.perf_counter()
        table = pa.table({"mfcc": tensor_array(np.ascontiguousarray(mfcc, np.float32)),
                          "logmel": tensor_array(np.ascontiguousarray(logmel, np.float32))})
        _parquet_bytes(table)
        stages["write"] += time.perf_counter() - t
    return {k: 1000 * v / min(n, len(paths)) for k, v in stages.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=300, help="GTZAN-3 songs (max 300)")
    parser.add_argument("--stereo-songs", type=int, default=60, help="44.1 kHz stereo songs")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "genres-bench"))
    args = parser.parse_args(argv)
    if not SHARED.exists():
        sys.exit(f"benchmark data not found at {SHARED}")
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    gtzan = sorted(str(p) for p in SHARED.glob("*/*.ogg"))[: args.songs]
    stereo = make_stereo_44k(gtzan[:: max(1, len(gtzan) // args.stereo_songs)][: args.stereo_songs],
                             workdir / "stereo44k")
    # warm caches (numba JIT, page cache) so neither side pays first-run costs
    naive_song(gtzan[0]), decode_song(stereo[0])
    results = []
    for name, paths in (("GTZAN-3 22k mono", gtzan), ("44.1k stereo", stereo)):
        naive_t, audio_s = pool_run(naive_song, paths)
        decode_t, _ = pool_run(decode_song, paths)
        ray_start, genres_t, summary = genres_run(paths, workdir / name.split()[0])
        results.append((name, len(paths), audio_s, naive_t, decode_t, ray_start, genres_t))
        print(f"{name}: Ray start {ray_start:.1f} s, extract {genres_t:.1f} s after Ray was up "
              f"({summary['ok']} ok, {summary['commits']} commit(s))", flush=True)
        import ray

        ray.shutdown()
    print(f"\n{'material':18} {'songs':>5} {'audio h':>7} {'naive s':>8} {'decode s':>8} "
          f"{'ray up s':>8} {'genres s':>8} {'x naive':>7} {'x naive+up':>10} "
          f"{'naive RTF':>9} {'genres RTF':>10} {'% decode':>8}")
    for name, n, audio_s, naive_t, decode_t, ray_start, genres_t in results:
        print(f"{name:18} {n:5d} {audio_s / 3600:7.2f} {naive_t:8.1f} {decode_t:8.1f} "
              f"{ray_start:8.1f} {genres_t:8.1f} {naive_t / genres_t:7.2f} "
              f"{naive_t / (genres_t + ray_start):10.2f} {audio_s / naive_t:8.0f}x "
              f"{audio_s / genres_t:9.0f}x {100 * decode_t / genres_t:7.0f}%")
    for name, paths in (("GTZAN-3 22k mono", gtzan), ("44.1k stereo", stereo)):
        stages = profile(paths)
        print(f"per song, serial ms ({name}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
