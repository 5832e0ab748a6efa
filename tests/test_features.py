import numpy as np
import pytest

from pipeline.errors import ParameterError
from pipeline.features import FeatureSpec, frame_audio, frame_features


def test_five_second_frame_has_216_columns():
    spec = FeatureSpec()
    assert spec.frame_samples == 110250
    assert spec.frame_columns == 216
    mfcc, logmel = frame_features(np.zeros((2, spec.frame_samples), np.float32), spec=spec)
    assert mfcc.shape == (2, 20, 216)
    assert logmel.shape == (2, 128, 216)
    assert mfcc.dtype == logmel.dtype == np.float32


@pytest.mark.parametrize("frame_s,hop_s,seconds,expected", [
    (5.0, None, 30.0, 6), (5.0, 2.5, 30.0, 11), (3.0, None, 30.0, 10), (3.0, 1.5, 30.0, 19),
    (0.1, None, 1.0, 10), (0.1, 0.05, 1.0, 19), (5.0, None, 29.9, 5),
])
def test_frame_counts(frame_s, hop_s, seconds, expected):
    spec = FeatureSpec(frame_seconds=frame_s, hop_seconds=hop_s)
    y = np.zeros(int(round(seconds * spec.sample_rate)), np.float32)
    frames, starts, padded = frame_audio(y, spec=spec)
    assert frames.shape == (expected, spec.frame_samples)
    assert not padded
    np.testing.assert_allclose(starts[1] - starts[0], hop_s or frame_s, atol=1e-4)


def test_short_song_is_padded_to_one_frame():
    spec = FeatureSpec()
    y = np.ones(spec.sample_rate // 2, np.float32)
    frames, starts, padded = frame_audio(y, spec=spec)
    assert padded and frames.shape == (1, spec.frame_samples)
    assert frames[0, : y.size].sum() == y.size and frames[0, y.size:].sum() == 0


def test_pure_tone_peaks_in_its_mel_band():
    import librosa

    spec = FeatureSpec(frame_seconds=1.0)
    t = np.arange(spec.frame_samples) / spec.sample_rate
    freq = 1000.0
    _, logmel = frame_features(np.sin(2 * np.pi * freq * t)[None].astype(np.float32), spec=spec)
    centres = librosa.mel_frequencies(n_mels=spec.n_mels + 2, fmax=spec.sample_rate / 2)[1:-1]
    peak_band = logmel[0].mean(axis=1).argmax()
    assert abs(peak_band - np.abs(centres - freq).argmin()) <= 1


def test_silence_gives_finite_features():
    spec = FeatureSpec()
    mfcc, logmel = frame_features(np.zeros((1, spec.frame_samples), np.float32), spec=spec)
    assert np.isfinite(mfcc).all() and np.isfinite(logmel).all()


def test_spec_round_trips_and_fingerprints():
    spec = FeatureSpec(frame_seconds=3.0, hop_seconds=1.5, dtype="float16")
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.fingerprint() == spec.fingerprint()
    assert FeatureSpec().fingerprint() != spec.fingerprint()


def test_musicnn_pools_are_a_new_column_and_old_specs_keep_their_fingerprint():
    from pipeline.features.spec import EmbeddingSpec, spec_from_record

    spec = EmbeddingSpec(model="MSD", weights="abc", offset_seconds=30.0, max_seconds=60.0)
    # fingerprints computed before the setting existed: directories and bundles still match
    assert spec.fingerprint() == "96a798289e0195c9"
    assert EmbeddingSpec().fingerprint() == "6adadb147c0164d6"
    old = spec.to_record()
    del old["spec"]["pools"]  # a record written before the setting existed
    assert spec_from_record(old) == spec and "pools" not in spec.columns()
    pools = EmbeddingSpec(model="MSD", weights="abc", offset_seconds=30.0, max_seconds=60.0,
                          pools=True)
    assert pools.fingerprint() != spec.fingerprint()
    assert pools.columns()["pools"] == (1506,) and spec_from_record(pools.to_record()) == pools


@pytest.mark.parametrize("bad", [{"frame_seconds": 0}, {"hop_seconds": -1}, {"dtype": "int8"},
                                 {"n_mfcc": 200}])
def test_spec_rejects_bad_settings(bad):
    with pytest.raises(ParameterError):
        FeatureSpec(**bad)


def _librosa_reference(frames, spec, sr=None):
    import librosa

    sr = sr or spec.sample_rate
    mel = librosa.feature.melspectrogram(y=frames, sr=sr, n_fft=spec.n_fft, hop_length=spec.hop_length,
                                         n_mels=spec.n_mels, power=2.0, center=True)
    logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    logmel = np.maximum(logmel, logmel.max(axis=(-2, -1), keepdims=True) - 80.0)
    return librosa.feature.mfcc(S=logmel, n_mfcc=spec.n_mfcc), logmel


def test_fast_path_matches_librosa(rng):
    spec = FeatureSpec()
    t = np.arange(spec.frame_samples) / spec.sample_rate
    frames = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size),
                       0.01 * rng.standard_normal(t.size)]).astype(np.float32)
    mfcc, logmel = frame_features(frames, spec=spec)
    ref_mfcc, ref_logmel = _librosa_reference(frames, spec)
    np.testing.assert_allclose(logmel, ref_logmel, atol=0.02)
    np.testing.assert_allclose(mfcc, ref_mfcc, atol=0.1)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmax", [(22050, 2048, 128, None), (16000, 512, 96, 8000),
                                                  (22050, 2048, 40, 8000.0), (44100, 4096, 64, None)])
def test_mel_filters_are_librosas(sr, n_fft, n_mels, fmax):
    import librosa

    from pipeline.features.frames import mel_filters

    want = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmax=fmax, dtype=np.float32)
    np.testing.assert_allclose(mel_filters(sr, n_fft, n_mels, fmax), want, rtol=1e-5, atol=1e-9)


def test_hann_window_is_scipys():
    import scipy.signal

    from pipeline.features.frames import _window

    for n in (512, 2048):
        np.testing.assert_allclose(_window(n), scipy.signal.get_window("hann", n), atol=1e-7)
