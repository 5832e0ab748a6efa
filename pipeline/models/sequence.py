"""The learned ``sequence`` aggregator: a small GRU over the frame log-odds of a frame model."""

from __future__ import annotations

import numpy as np

from pipeline.models.keras import tf_keras

_EPS = 1e-6


def frame_logodds(probs: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of frame probabilities [n_frames, n_classes], clipped to +-13.8."""
    p = np.clip(np.asarray(probs, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)).astype(np.float32)


def pad_sequences(songs: list[np.ndarray]) -> np.ndarray:
    """Frame log-odds of each song [n_frames_i, n_classes] -> [n_songs, max n_frames, n_classes].

    Padding is all zeros, which the model masks; a real frame never has every log-odds exactly 0.
    """
    n = max(len(s) for s in songs)
    out = np.zeros((len(songs), n, songs[0].shape[1]), np.float32)
    for i, s in enumerate(songs):
        out[i, :len(s)] = s
    return out


def build_sequence(n_classes: int, *, units: int = 16, dropout: float = 0.2):
    """GRU over a song's frame log-odds [batch, n_frames, n_classes] -> softmax (batch, n_classes)."""
    keras = tf_keras()
    layers = keras.layers
    inputs = keras.Input(shape=(None, n_classes), name="logodds")
    x = layers.Masking(mask_value=0.0)(inputs)
    x = layers.GRU(units, dropout=dropout)(x)
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax", name="genre")(x),
                       name="sequence")


def fit_sequence(songs: list[np.ndarray], y: np.ndarray, n_classes: int, *,
                 epochs: int = 300, patience: int = 30, seed: int = 0):
    """Fit the aggregator on (per-song frame probabilities [n_frames_i, n_classes], class) pairs.

    Pass songs the frame model did not train on (the validation songs): on its own train songs
    a frame model is overconfident, and an aggregator fitted there learns to trust it blindly.
    Every fourth song is held out for early stopping (with fewer than 16 songs, 50 epochs
    without it); test songs are never seen.
    """
    keras = tf_keras()
    keras.utils.set_random_seed(seed)
    model = build_sequence(n_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = pad_sequences([frame_logodds(p) for p in songs])
    held = np.arange(len(songs)) % 4 == 3
    if held.sum() < 4:  # too few songs to hold any out: a short fixed schedule instead
        model.fit(x, y, epochs=min(epochs, 50), batch_size=16, verbose=0)
        return model
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    model.fit(x[~held], y[~held], validation_data=(x[held], y[held]), epochs=epochs,
              batch_size=16, verbose=0, callbacks=[stop])
    return model


def sequence_scores(model, songs: list[np.ndarray]) -> np.ndarray:
    """Song probabilities [n_songs, n_classes] from each song's frame probabilities."""
    return model.predict(pad_sequences([frame_logodds(p) for p in songs]), verbose=0)
