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
    basis = mel_filters(sample_rate, n_fft, n_mels, fmax)
    used = np.flatnonzero(basis.any(axis=0))
    return np.ascontiguousarray(basis[:, : used[-1] + 1])


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmax: float | None = None,
                fmin: float = 0.0) -> np.ndarray:
    """Slaney-style mel filterbank [n_mels, 1 + n_fft // 2], float32: the weights of
    ``librosa.filters.mel`` (Slaney mel scale, area-normalised triangles), computed the same
    way here so the workers need not import librosa (with numba and scipy.signal, ~0.9 s of
    start-up per process)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, freqs)
    weights = np.zeros((n_mels, freqs.size), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, np.newaxis]
    return weights


_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0  # Slaney: linear below 1 kHz, logarithmic above
_MIN_LOG_MEL, _LOG_STEP = _MIN_LOG_HZ / _F_SP, np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOG_STEP
    return hz / _F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _F_SP * mels
    log = mels >= _MIN_LOG_MEL
    hz[log] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mels[log] - _MIN_LOG_MEL))
    return hz


@functools.lru_cache(maxsize=8)
def _mel_sparse(sample_rate: int, n_fft: int, n_mels: int, fmax: float | None):
    """``_mel_basis`` as a sparse CSR matrix: an FFT bin weighs in at most two bands (2,018
    weights of 131,072 at 22,050 Hz, n_fft 2048, 128 bands)."""
    import scipy.sparse

    return scipy.sparse.csr_matrix(_mel_basis(sample_rate, n_fft, n_mels, fmax))


def mel_power(power: np.ndarray, *, sample_rate: int, n_fft: int, n_mels: int,
              fmax: float | None) -> np.ndarray:
    """Mel-band power of power spectra.

    Parameters
    ----------
    power : np.ndarray [shape=(..., 1 + n_fft // 2)], float32
    sample_rate, n_fft, n_mels, fmax
        The Slaney mel bank (:func:`mel_filters`).

    Returns
    -------
    np.ndarray [shape=(..., n_mels)], float32
        A sparse product: ~2 multiply-adds per bin instead of ``n_mels`` (a minute at
        22,050 Hz: 3.7 ms against 8.4 ms for the dense product on one core), single-threaded,
        so the sums do not depend on a node's BLAS threads.
    """
    basis = _mel_sparse(sample_rate, n_fft, n_mels, fmax)
    flat = power.reshape(-1, power.shape[-1])[:, : basis.shape[1]]
    mel = np.asarray(flat @ basis.T, dtype=np.float32)
    return mel.reshape(*power.shape[:-1], n_mels)


@functools.lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    """Periodic Hann window [n_fft], float32 (``scipy.signal.get_window("hann", n_fft)``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


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
    mel = mel_power(power, sample_rate=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                    fmax=fmax)  # [n, t, n_mels]
    logmel = np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)
    logmel *= 10.0
    # Per-frame top_db so a quiet frame is not clipped relative to a loud one elsewhere.
    np.maximum(logmel, logmel.max(axis=(1, 2), keepdims=True) - 80.0, out=logmel)
    logmel = np.ascontiguousarray(logmel.transpose(0, 2, 1))  # [n, n_mels, t]
    mfcc = scipy.fft.dct(logmel, type=2, norm="ortho", axis=1)[:, : spec.n_mfcc]
    return mfcc.astype(spec.dtype, copy=False), logmel.astype(spec.dtype, copy=False)
