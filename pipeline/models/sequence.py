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
                 epochs: int = 300, patience: int = 30, seed: int = 0, logodds: bool = False):
    """Fit the aggregator on (per-song frame probabilities [n_frames_i, n_classes], class) pairs
    (``logodds``: the songs come as their frames' log-odds, :func:`frame_logodds`).

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
    x = pad_sequences(list(songs) if logodds else [frame_logodds(p) for p in songs])
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


def sequence_weights(model) -> dict[str, np.ndarray]:
    """The weights :func:`gru_scores` runs, from a Keras model of :func:`build_sequence`."""
    keras = tf_keras()
    gru = next(layer for layer in model.layers if isinstance(layer, keras.layers.GRU))
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    kernel, recurrent, bias = gru.get_weights()
    return {"kernel": kernel, "recurrent": recurrent, "bias": bias.reshape(2, -1),
            "dense": dense.get_weights()[0], "dense_bias": dense.get_weights()[1]}


def gru_scores(weights: dict, sequences: list[np.ndarray]) -> np.ndarray:
    """The ``sequence`` model of :func:`build_sequence` in numpy (no TensorFlow): song
    probabilities [n_songs, n_classes] from each song's frame log-odds [n_frames_i, n_classes].

    ``weights``: :func:`sequence_weights` of the Keras model. tf-keras' GRU (``reset_after``,
    its default): z, r = sigmoid(x W + b_x + h U + b_h) per gate, the candidate state
    tanh(x W_h + b_xh + r * (h U_h + b_hh)), h = z h + (1 - z) candidate. A frame of all
    zeros (the padding, which the Masking layer masks) leaves h as it is: the songs run
    together step by step, each frozen past its last frame.
    """
    recurrent, bias = weights["recurrent"], weights["bias"]
    units = recurrent.shape[0]
    x = pad_sequences(sequences).astype(np.float64)  # [n, steps, classes]
    valid = np.any(x != 0, axis=2)
    h = np.zeros((len(sequences), units))
    for t in range(x.shape[1]):
        gx = x[:, t] @ weights["kernel"] + bias[0]
        gh = h @ recurrent + bias[1]
        z = _sigmoid(gx[:, :units] + gh[:, :units])
        r = _sigmoid(gx[:, units:2 * units] + gh[:, units:2 * units])
        candidate = np.tanh(gx[:, 2 * units:] + r * gh[:, 2 * units:])
        h = np.where(valid[:, t:t + 1], z * h + (1 - z) * candidate, h)
    logits = h @ weights["dense"] + weights["dense_bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))
