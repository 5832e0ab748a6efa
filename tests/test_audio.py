"""Decoding windows of long stereo files: libsndfile for Vorbis, FFmpeg for Opus, and the
features of a window against the naive librosa path."""

import numpy as np
import pytest

from pipeline.storage.audio import load_audio


def _stereo(seconds: float, rate: int, rng) -> np.ndarray:
    """[n, 2] float32 music-like test signal: chords that change every second, and noise."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 220 * 2 ** (np.floor(t) % 12 / 12)
    left = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.1 * np.sin(2 * np.pi * 3 * pitch * t)
    right = 0.2 * np.sin(2 * np.pi * 1.5 * pitch * t)
    noise = 0.01 * rng.standard_normal((t.size, 2))
    return (np.stack([left, right], axis=1) + noise).astype(np.float32)


def _write_opus(path, stereo: np.ndarray, rate: int) -> None:
    import av

    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="stereo")
        for start in range(0, stereo.shape[0], rate):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[start:start + rate].T),
                                               format="fltp", layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _write_vorbis(path, stereo: np.ndarray, rate: int) -> None:
    import soundfile as sf

    with sf.SoundFile(path, "w", rate, 2, format="OGG", subtype="VORBIS") as f:
        for start in range(0, stereo.shape[0], rate):  # one large write crashes libsndfile
            f.write(stereo[start:start + rate])


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    rng = np.random.default_rng(18)
    root = tmp_path_factory.mktemp("long")
    opus, vorbis = root / "a.opus", root / "b.ogg"
    _write_opus(opus, _stereo(50, 48000, rng), 48000)
    _write_vorbis(vorbis, _stereo(50, 44100, rng), 44100)
    return opus, vorbis


@pytest.mark.parametrize("offset", [0.0, 0.7, 12.3, 30.0])
def test_an_opus_window_is_the_same_samples_as_decoding_from_the_start(long_files, offset):
    """FFmpeg seeks into Opus and places frames by timestamp: the window must be exactly the
    samples a decode from the start gives (and close to libsndfile's own decode)."""
    import soundfile as sf

    opus, _ = long_files
    whole = load_audio(str(opus), sample_rate=48000)
    window = load_audio(str(opus), sample_rate=48000, offset_seconds=offset, max_seconds=15)
    start = int(round(offset * 48000))
    assert window.shape == (15 * 48000,)
    np.testing.assert_array_equal(window, whole[start:start + window.size])
    with sf.SoundFile(opus) as f:  # libopus through libsndfile: another decoder, same audio
        f.seek(start)
        other = f.read(window.size, dtype="float32").mean(axis=1)
    assert np.abs(other - window).max() < 0.01


def test_a_window_past_the_end_of_an_opus_file_is_empty_or_short(long_files):
    opus, _ = long_files
    tail = load_audio(str(opus), sample_rate=48000, offset_seconds=45, max_seconds=60)
    assert 4.9 * 48000 < tail.size <= 5 * 48000


def test_stereo_is_the_mean_of_the_channels(long_files):
    import soundfile as sf

    _, vorbis = long_files
    y = load_audio(str(vorbis), sample_rate=44100, offset_seconds=3, max_seconds=4)
    both = sf.read(vorbis, dtype="float32", start=3 * 44100, frames=4 * 44100)[0]
    np.testing.assert_allclose(y, both.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("which", [0, 1])
def test_window_features_match_the_naive_librosa_path(long_files, which):
    """44.1 kHz Vorbis and 48 kHz Opus from an offset: the frame features equal those of
    ``librosa.load(sr=22050, offset, duration)`` + ``librosa.feature`` within float noise."""
    import librosa

    from pipeline.features import FeatureSpec, frame_audio, frame_features

    path = long_files[which]
    spec = FeatureSpec(frame_seconds=5.0, offset_seconds=20.0, max_seconds=20.0)
    y = load_audio(str(path), sample_rate=22050, offset_seconds=20.0, max_seconds=20.0)
    frames, _, _ = frame_audio(y, spec=spec)
    mfcc, logmel = frame_features(frames, spec=spec)
    ref, sr = librosa.load(str(path), sr=22050, offset=20.0, duration=20.0)
    assert abs(ref.size - y.size) <= 2
    for i, frame in enumerate(librosa.util.frame(ref, frame_length=spec.frame_samples,
                                                 hop_length=spec.frame_samples, axis=0)):
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=frame, sr=sr, n_mels=128),
                                  top_db=80.0)
        assert np.abs(logmel[i] - mel).mean() < 0.05
        assert np.percentile(np.abs(logmel[i] - mel), 99) < 0.5


def test_missing_files_are_found_by_a_stat_before_any_decoder(tmp_path):
    """A local file that is not there is a ``missing`` error without the sandbox; a file, a
    folder, or a URI whose scheme is refused is left to the decoder (None)."""
    from pipeline.storage.audio import missing_files

    (tmp_path / "here.wav").write_bytes(b"RIFF")
    uris = [str(tmp_path / "here.wav"), str(tmp_path / "gone.ogg"), f"file://{tmp_path}/x.ogg",
            str(tmp_path), str(tmp_path / "here.wav" / "under.ogg"), "ftp://host/a.ogg",
            str(tmp_path / "no-folder" / "a.ogg"), str(tmp_path / "no-folder" / "b.ogg")]
    found = missing_files(uris, [0, 0, 3, 0, 0, 1, 0, 0])
    assert [type(e).__name__ if e else None for e in found] == [
        None, "AudioMissingError", "AudioMissingError", None, "AudioMissingError", None,
        "AudioMissingError", "AudioMissingError"]
    assert str(found[1]) == f"no such file: {tmp_path / 'gone.ogg'}"
    assert found[1].kind == "missing"
