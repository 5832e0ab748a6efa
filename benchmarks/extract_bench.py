"""Extraction benchmark: naive librosa in a 2-process pool vs `genres extract` on Ray.

Run quietly (nothing else on the machine):  .venv/bin/python benchmarks/extract_bench.py

Two materials, one run, the same 5 s frames, MFCC 20 + log-mel 128 at 22,050 Hz:
  GTZAN-3     300 excerpts of 30 s, 22,050 Hz mono Ogg Vorbis, whole files;
  soundtrack  128 tracks of 2-6 minutes (GTZAN-3 excerpts joined: benchmarks/material.py),
              44.1 kHz stereo Vorbis and 48 kHz stereo Vorbis/Opus, 60 s from 30 s in
              (``--offset-seconds 30 --max-seconds 60``, as a tagger samples long songs).
For each it times
  naive   librosa.load(sr=22050, offset, duration) + librosa.feature.mfcc +
          librosa.feature.melspectrogram, computed separately, in a warm 2-process pool
          (the issue's baseline); naive1 the same with one BLAS thread per process;
  decode  the pipeline's decoder alone (window, downmix; no resampling), same pool: the floor;
  genres  run_extract on local Ray (2 CPUs) once Ray is up (Ray's start printed apart), and
          the marginal seconds of N more songs in a warm run (2N songs minus N songs);
prints times, ratios against issue 37's goals (warm: >= 1.3x the fair script on GTZAN-3,
>= 1.6x and <= 1.3x the decode floor on the soundtrack material), and a serial per-stage
profile in CPU ms per song.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "gtzan3"
FRAME_S, SR = 5.0, 22050
GOALS = {"GTZAN-3": 1.3, "soundtrack": 1.6}  # x the fair script (naive1), warm (issue 37)
FLOOR_GOALS = {"soundtrack": 1.3}  # at most x the decode-only floor, warm


def naive_song(path: str, offset: float = 0.0, duration: float | None = None) -> float:
    """The baseline per song: returns the audio seconds processed."""
    import librosa

    y, sr = librosa.load(path, sr=SR, offset=offset, duration=duration)
    n = int(FRAME_S * sr)
    for start in range(0, len(y) - n + 1, n):
        frame = y[start:start + n]
        librosa.feature.mfcc(y=frame, sr=sr, n_mfcc=20)
        librosa.power_to_db(librosa.feature.melspectrogram(y=frame, sr=sr, n_mels=128))
    return len(y) / sr


def decode_song(path: str, offset: float = 0.0, duration: float | None = None) -> float:
    """The pipeline's decoder at the file's own rate (no resampling): the floor."""
    import soundfile as sf

    from pipeline.storage.audio import load_audio

    rate = sf.info(path).samplerate
    return load_audio(path, sample_rate=rate, offset_seconds=offset,
                      max_seconds=duration).size / rate


_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def pool_run(fn, paths, processes=2, one_thread=False):
    """Seconds for ``fn`` over ``paths`` in a warm pool (imports and JIT paid before timing);
    ``one_thread``: each process's BLAS/OpenMP/numba limited to one thread."""
    saved = {k: os.environ.get(k) for k in _THREADS}
    if one_thread:
        os.environ.update(dict.fromkeys(_THREADS, "1"))
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.map(fn, paths[:processes], chunksize=1)
            started = time.perf_counter()
            seconds = sum(pool.map(fn, paths, chunksize=4))
            return time.perf_counter() - started, seconds
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def genres_run(paths, workdir: pathlib.Path, window: dict):
    """Times of run_extract over ``paths`` on local Ray: Ray's start, the first run once Ray
    is up, then (warm) a run of the same songs again and one of twice as many songs (each
    song under a second id): their difference is the marginal cost of N songs, without the
    fixed cost of a run. Returns (ray start, first run, warm N, warm 2N, first summary)."""
    from pipeline.features import FeatureSpec
    from pipeline.runtime.extract import run_extract
    from pipeline.runtime.session import init_ray

    workdir.mkdir(parents=True, exist_ok=True)
    spec = FeatureSpec(frame_seconds=FRAME_S, **window)

    def extract(copies: int, name: str):
        manifest = workdir / f"{name}.csv"
        manifest.write_text("uri,song_id\n" + "".join(
            f"{p},{k}/{i}\n" for k in range(copies) for i, p in enumerate(paths)))
        out = workdir / name
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = run_extract(str(manifest), str(out), spec)
        seconds = time.perf_counter() - started
        shutil.rmtree(out, ignore_errors=True)
        return seconds, summary

    t0 = time.perf_counter()
    init_ray(None)
    ray_start = time.perf_counter() - t0
    first, summary = extract(1, "first")
    warm_n, _ = extract(1, "warm-n")
    warm_2n, _ = extract(2, "warm-2n")
    return ray_start, first, warm_n, warm_2n, summary


def profile(paths, window: dict, n=12):
    """Serial CPU ms per song of each stage: decode (window, downmix), resample, STFT, mel,
    dB + DCT, Parquet."""
    import pyarrow as pa
    import scipy.fft
    import soxr

    from pipeline.features import FeatureSpec, frame_audio
    from pipeline.features.frames import mel_power, power_spectrogram
    from pipeline.storage.audio import load_audio
    from pipeline.storage.shards import _parquet_bytes, tensor_array
    import soundfile as sf

    spec = FeatureSpec(frame_seconds=FRAME_S, **window)
    stages = dict.fromkeys(("decode", "resample", "stft", "mel", "db_dct", "parquet"), 0.0)
    picked = paths[:: max(1, len(paths) // n)][:n]
    for i, path in enumerate([picked[0]] + picked):  # the first run warms caches
        if i == 1:
            stages = dict.fromkeys(stages, 0.0)
        clock = time.process_time
        t = clock()
        rate = sf.info(path).samplerate
        y = load_audio(path, sample_rate=rate, offset_seconds=spec.offset_seconds,
                       max_seconds=spec.max_seconds)
        stages["decode"] += clock() - t
        t = clock()
        y = soxr.resample(y, rate, SR, quality="HQ") if rate != SR else y
        stages["resample"] += clock() - t
        frames, _, _ = frame_audio(y, spec=spec)
        t = clock()
        power = power_spectrogram(np.ascontiguousarray(frames), n_fft=spec.n_fft,
                                  hop_length=spec.hop_length)
        stages["stft"] += clock() - t
        t = clock()
        mel = mel_power(power, sample_rate=SR, n_fft=spec.n_fft, n_mels=spec.n_mels,
                        fmax=SR / 2)
        stages["mel"] += clock() - t
        t = clock()
        logmel = 10 * np.log10(np.maximum(mel, 1e-10)).transpose(0, 2, 1)
        mfcc = scipy.fft.dct(logmel, type=2, norm="ortho", axis=1)[:, :20]
        stages["db_dct"] += clock() - t
        t = clock()
        table = pa.table({"mfcc": tensor_array(np.ascontiguousarray(mfcc, np.float32)),
                          "logmel": tensor_array(np.ascontiguousarray(logmel, np.float32))})
        _parquet_bytes(table)
        stages["parquet"] += clock() - t
    return {k: 1000 * v / len(picked) for k, v in stages.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=300, help="GTZAN-3 songs (max 300)")
    parser.add_argument("--tracks", type=int, default=128, help="soundtrack tracks")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "genres-bench"))
    args = parser.parse_args(argv)
    if not SHARED.exists():
        sys.exit(f"benchmark data not found at {SHARED}")
    from material import soundtrack_catalog

    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    materials = {
        "GTZAN-3": (sorted(str(p) for p in SHARED.glob("*/*.ogg"))[: args.songs], {}),
        "soundtrack": (soundtrack_catalog(workdir / "soundtrack", args.tracks),
                       {"offset_seconds": 30.0, "max_seconds": 60.0}),
    }
    results = []
    for name, (paths, window) in materials.items():
        args_of = (window.get("offset_seconds", 0.0), window.get("max_seconds"))
        naive = functools.partial(naive_song, offset=args_of[0], duration=args_of[1])
        naive_t, audio_s = pool_run(naive, paths)
        naive1_t, _ = pool_run(naive, paths, one_thread=True)
        decode_t, _ = pool_run(functools.partial(decode_song, offset=args_of[0],
                                                 duration=args_of[1]), paths)
        ray_start, genres_t, warm_n, warm_2n, summary = genres_run(
            paths, workdir / "runs" / name, window)
        marginal = warm_2n - warm_n
        results.append((name, len(paths), audio_s, naive_t, naive1_t, decode_t, ray_start,
                        genres_t, warm_n, marginal))
        print(f"{name}: Ray start {ray_start:.1f} s, extract {genres_t:.1f} s after Ray was up "
              f"({summary['ok']} ok, {summary.get('commits', 0)} commit(s)); warm: N songs "
              f"{warm_n:.1f} s, 2N {warm_2n:.1f} s, marginal N {marginal:.1f} s", flush=True)
        import ray

        ray.shutdown()
    print(f"\n{'material':11} {'songs':>5} {'audio h':>7} {'naive s':>8} {'naive1 s':>8} "
          f"{'decode s':>8} {'ray up s':>8} {'first s':>8} {'warm s':>8} {'x naive1':>8} "
          f"{'goal':>5} {'x naive':>7} {'/ floor':>7} {'goal':>5} {'marginal':>8} "
          f"{'x naive1':>8} {'ms/song':>7}")
    for (name, n, audio_s, naive_t, naive1_t, decode_t, ray_start, genres_t, warm_n,
         marginal) in results:
        ratio, floor = naive1_t / warm_n, warm_n / decode_t
        floor_goal = FLOOR_GOALS.get(name)
        print(f"{name:11} {n:5d} {audio_s / 3600:7.2f} {naive_t:8.1f} {naive1_t:8.1f} "
              f"{decode_t:8.1f} {ray_start:8.1f} {genres_t:8.1f} {warm_n:8.1f} {ratio:8.2f} "
              f"{'met' if ratio >= GOALS[name] else 'MISS':>5} {naive_t / warm_n:7.2f} "
              f"{floor:7.2f} "
              f"{'-' if floor_goal is None else 'met' if floor <= floor_goal else 'MISS':>5} "
              f"{marginal:8.1f} {naive1_t / marginal:8.2f} {1000 * marginal / n:7.1f}")
    print("(naive: the pool as a user starts it, each process with its libraries' default "
          "threads; naive1: one BLAS/OpenMP thread per process, which avoids oversubscribing "
          "the cores: the fair baseline; first: genres' first run once Ray is up; warm: the "
          "same songs again (steady state: the ratios and goals are of this run); / floor: "
          "warm / decode alone; marginal: seconds N more songs add to a warm run, 2N minus N, "
          "the cost per song at catalog scale, and per song in ms on the 2 CPUs)")
    for name, (paths, window) in materials.items():
        stages = profile(paths, window)
        print(f"per song, serial CPU ms ({name}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
              + f"; total {sum(stages.values()):.1f}")


if __name__ == "__main__":
    main()
