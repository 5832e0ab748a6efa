"""A 30-minute file is processed in bounded memory (no whole-file float64 copies)."""

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from pipeline.extract import song_features
from pipeline.features import FeatureSpec
from pipeline.storage.catalog import Song

pytestmark = pytest.mark.slow


def test_thirty_minute_song_peak_memory(tmp_path):
    sr, minutes = 44100, 30
    path = tmp_path / "long.flac"
    t = np.arange(sr * 60) / sr
    minute = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    with sf.SoundFile(path, "w", sr, channels=2, format="FLAC") as f:
        for _ in range(minutes):
            f.write(np.stack([minute, minute], axis=1))
    decoded_mono_bytes = sr * 60 * minutes * 4  # float32, 318 MB
    tracemalloc.start()
    feats = song_features(Song("long", str(path)), FeatureSpec())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert feats["logmel"].shape == (360, 128, 216)
    assert abs(feats["audio_seconds"] - minutes * 60) < 1
    out_bytes = feats["logmel"].nbytes + feats["mfcc"].nbytes
    # mono float32 signal + the output + a bounded per-chunk working set; one float64 copy
    # of the signal alone would add another 2 x 318 MB
    assert peak < decoded_mono_bytes + out_bytes + 250e6, f"peak {peak / 1e6:.0f} MB"
