"""Framing and MFCC + log-mel from one STFT per song."""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmax: float | None) -> np.ndarray:
    """Mel filterbank [n_mels, n_bins], float32, cut after its last non-zero FFT bin.

    ``n_bins <= 1 + n_fft // 2``: bins above ``fmax`` have no weight and are skipped in the
    projection. Cached: one per spec.
    """
    import librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax,
                                dtype=np.float32)
    used = np.flatnonzero(basis.any(axis=0))
    return np.ascontiguousarray(basis[:, : used[-1] + 1])


@functools.lru_cache(maxsize=1)
def _blas():
    import threadpoolctl

    return threadpoolctl.ThreadpoolController()


@functools.lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    import scipy.signal

    return scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)


def power_spectrogram(frames: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Power STFT of each frame, as ``librosa.stft(center=True, pad_mode="constant")`` squared.

    Parameters
    ----------
    frames : np.ndarray [shape=(n_frames, n)], float32
    n_fft, hop_length : int
        Window length and hop in samples (periodic Hann window).

    Returns
    -------
    np.ndarray [shape=(n_frames, t, 1 + n_fft // 2)], float32, ``t = 1 + n // hop_length``.
        Time-major so the mel projection is one contiguous matrix product.
    """
    import scipy.fft

    padded = np.pad(frames, ((0, 0), (n_fft // 2, n_fft // 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[:, ::hop_length]
    spectrum = scipy.fft.rfft(windows * _window(n_fft), axis=-1)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    return power


def frame_features(frames: np.ndarray, *, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """MFCC and log-mel of each frame, both from a single STFT.

    Parameters
    ----------
    frames : np.ndarray [shape=(n_frames, n)]
        Audio frames; ``n = spec.frame_samples`` at ``spec.sample_rate``.
    spec : FeatureSpec
        STFT (n_fft, hop_length), mel and MFCC settings.

    Returns
    -------
    mfcc : np.ndarray [shape=(n_frames, n_mfcc, t)], ``spec.dtype``
    logmel : np.ndarray [shape=(n_frames, n_mels, t)], ``spec.dtype``, in dB (ref 1.0), each
        frame clipped to 80 dB below its own peak.
        ``t = spec.frame_columns`` (216 for 5 s at 22,050 Hz, hop 512).
    """
    import scipy.fft

    fmax = spec.fmax if spec.fmax is not None else spec.sample_rate / 2
    frames = np.asarray(frames, dtype=np.float32)
    power = power_spectrogram(frames, n_fft=spec.n_fft, hop_length=spec.hop_length)
    # One BLAS thread: a multi-threaded sgemm sums in another order, and features must not
    # depend on the thread settings of the node (Ray tasks run with OMP_NUM_THREADS=1).
    basis = _mel_basis(spec.sample_rate, spec.n_fft, spec.n_mels, fmax)
    with _blas().limit(limits=1, user_api="blas"):
        mel = power[..., : basis.shape[1]] @ basis.T  # [n, t, n_mels]
    logmel = np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)
    logmel *= 10.0
    # Per-frame top_db so a quiet frame is not clipped relative to a loud one elsewhere.
    np.maximum(logmel, logmel.max(axis=(1, 2), keepdims=True) - 80.0, out=logmel)
    logmel = np.ascontiguousarray(logmel.transpose(0, 2, 1))  # [n, n_mels, t]
    mfcc = scipy.fft.dct(logmel, type=2, norm="ortho", axis=1)[:, : spec.n_mfcc]
    return mfcc.astype(spec.dtype, copy=False), logmel.astype(spec.dtype, copy=False)
