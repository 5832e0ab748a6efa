"""Framing and MFCC + log-mel from one STFT per song."""

from __future__ import annotations

import numpy as np

from pipeline.features.spec import FeatureSpec


def frame_audio(y: np.ndarray, *, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut a mono signal into fixed-length frames.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono audio at ``spec.sample_rate``.
    spec : FeatureSpec
        Frame length and hop (seconds).

    Returns
    -------
    frames : np.ndarray [shape=(n_frames, spec.frame_samples)]
        A strided view where possible; a trailing partial frame is dropped.
    starts_s : np.ndarray [shape=(n_frames,)]
        Start time of each frame in seconds.
    padded : bool
        True when the song was shorter than one frame and was zero-padded to one frame.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"frame_audio expects mono audio of shape (n,), got {y.shape}")
    length, hop = spec.frame_samples, spec.hop_samples
    if y.shape[0] < length:
        frames = np.zeros((1, length), dtype=y.dtype)
        frames[0, : y.shape[0]] = y
        return frames, np.zeros(1), True
    n_frames = 1 + (y.shape[0] - length) // hop
    frames = np.lib.stride_tricks.sliding_window_view(y, length)[::hop][:n_frames]
    return frames, np.arange(n_frames) * hop / spec.sample_rate, False


def _mel_basis(spec: FeatureSpec) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                               fmax=spec.fmax, dtype=np.float32)


def frame_features(frames: np.ndarray, *, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """MFCC and log-mel of each frame, both from a single STFT.

    Parameters
    ----------
    frames : np.ndarray [shape=(n_frames, spec.frame_samples)]
        Audio frames at ``spec.sample_rate``.
    spec : FeatureSpec
        STFT (n_fft, hop_length), mel and MFCC settings.

    Returns
    -------
    mfcc : np.ndarray [shape=(n_frames, n_mfcc, t)], ``spec.dtype``
    logmel : np.ndarray [shape=(n_frames, n_mels, t)], ``spec.dtype``, in dB (ref 1.0, top 80 dB)
        ``t = spec.frame_columns`` (216 for 5 s at 22,050 Hz, hop 512).
    """
    import librosa

    frames = np.ascontiguousarray(frames, dtype=np.float32)
    stft = librosa.stft(frames, n_fft=spec.n_fft, hop_length=spec.hop_length, center=True)
    power = np.abs(stft) ** 2
    mel = _mel_basis(spec) @ power  # [n_mels, n_freq] @ [n_frames, n_freq, t]
    # Per-frame top_db so a quiet frame is not clipped relative to a loud one elsewhere.
    logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    logmel = np.maximum(logmel, logmel.max(axis=(-2, -1), keepdims=True) - 80.0)
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=spec.n_mfcc)
    return mfcc.astype(spec.dtype), logmel.astype(spec.dtype)
