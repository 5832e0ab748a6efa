"""musicnn's input representation (pure): 16 kHz audio -> 3 s log-mel patches."""

from __future__ import annotations

import numpy as np

from pipeline.features.frames import mel_power, power_spectrogram

SAMPLE_RATE, N_FFT, HOP, N_MELS, PATCH_FRAMES = 16000, 512, 256, 96, 187
PATCH_SECONDS = PATCH_FRAMES * HOP / SAMPLE_RATE  # 2.992 s between patch starts


def musicnn_patches(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """Non-overlapping log-mel patches, as the original's ``batch_data(n_frames, n_frames)``.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono audio at 16 kHz.

    Returns
    -------
    patches : np.ndarray [shape=(n_patches, 187, 96)], float32
        ``log10(10000 * mel + 1)`` of the power mel spectrogram (n_fft 512, hop 256, 96 Slaney
        mel bands), computed in float32 (the original casts to float16 first, which overflows
        to inf on loud music).
    padded : bool
        True when the song was shorter than one patch and was zero-padded to one.
    """
    y = np.asarray(y, dtype=np.float32)
    power = power_spectrogram(y[None], n_fft=N_FFT, hop_length=HOP)[0]  # [t, 257]
    mel = mel_power(power, sample_rate=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS,
                    fmax=SAMPLE_RATE / 2)  # [t, 96]
    logmel = np.log10(10000.0 * mel + 1.0, dtype=np.float32)
    padded = logmel.shape[0] < PATCH_FRAMES
    if padded:
        logmel = np.concatenate([logmel, np.zeros((PATCH_FRAMES - logmel.shape[0], N_MELS),
                                                  np.float32)])
    n = 1 + (logmel.shape[0] - PATCH_FRAMES) // PATCH_FRAMES
    return logmel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, N_MELS), padded
