"""musicnn (Pons & Serra 2019) re-implemented in tf-keras, to load the published weights.

Input: log-mel patches [batch, 187, 96] (3 s at 16 kHz, hop 256, 96 bands, log10(10000 x + 1)).
Front-end: two timbral convolutions (7 x 38 and 7 x 67 over time x frequency, 204 filters) and
three temporal ones (128/64/32 x 1, 51 filters), each batch-normalised and max-pooled over
frequency. Mid-end: three 7-wide 1D convolutions (64 filters) with residual connections, densely
concatenated with the front-end (753 features per frame). Back-end: max and mean over time,
batch norm, dense 200 (ReLU, batch norm: the penultimate embedding), dense to the tags.
"""

from __future__ import annotations

import numpy as np

from pipeline.models.keras import tf_keras

N_FRAMES, N_MELS = 187, 96
EMBEDDING = 200
_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's epsilon


def build_musicnn(n_tags: int = 50, *, midend_filters: int = 64, backend_units: int = EMBEDDING):
    """The musicnn network; outputs ``taggram`` (sigmoid, [b, n_tags]), ``penultimate``
    ([b, 200]), ``mean_pool`` and ``max_pool`` ([b, 753]) for input [b, 187, 96].

    Layer names follow the TF1 variable scopes of the original checkpoint
    (``conv2d_5``, ``batch_normalization_9``, ...), so :func:`load_weights` maps them by name.
    """
    keras = tf_keras()
    import tensorflow as tf

    L = keras.layers

    def bn(i):
        return L.BatchNormalization(epsilon=_EPS, name=f"batch_normalization{'_' + str(i) if i else ''}")

    def conv(i, filters, kernel, padding):
        return L.Conv2D(filters, kernel, padding=padding, activation="relu",
                        name=f"conv2d{'_' + str(i) if i else ''}")

    def pool_over_frequency(x):
        # [b, t, f, c] -> [b, t, c]
        return L.Lambda(lambda v: tf.reduce_max(v, axis=2))(x)

    x = keras.Input(shape=(N_FRAMES, N_MELS), name="patches")
    normalized = bn(0)(L.Reshape((N_FRAMES, N_MELS, 1))(x))
    padded = L.ZeroPadding2D(((3, 3), (0, 0)))(normalized)
    front = [pool_over_frequency(bn(1)(conv(0, 204, (7, int(0.4 * N_MELS)), "valid")(padded))),
             pool_over_frequency(bn(2)(conv(1, 204, (7, int(0.7 * N_MELS)), "valid")(padded)))]
    for i, length in enumerate((128, 64, 32)):
        front.append(pool_over_frequency(bn(3 + i)(conv(2 + i, 51, (length, 1), "same")(normalized))))
    front = L.Concatenate(axis=2)(front)  # [b, t, 561]

    def midend_conv(i, inputs):  # [b, t, f] -> [b, t, filters]
        h = L.ZeroPadding2D(((3, 3), (0, 0)))(L.Reshape((N_FRAMES, inputs.shape[-1], 1))(inputs))
        h = conv(5 + i, midend_filters, (7, inputs.shape[-1]), "valid")(h)
        return L.Reshape((N_FRAMES, midend_filters))(bn(6 + i)(h))

    m1 = midend_conv(0, front)
    m2 = L.Add()([midend_conv(1, m1), m1])
    m3 = L.Add()([midend_conv(2, m2), m2])
    features = L.Concatenate(axis=2)([front, m1, m2, m3])  # [b, t, 753]

    max_pool = L.Lambda(lambda v: tf.reduce_max(v, axis=1), name="max_pool")(features)
    mean_pool = L.Lambda(lambda v: tf.reduce_mean(v, axis=1), name="mean_pool")(features)
    # the original flattens [b, 753, 2] (max, mean) pairs: interleave to keep its weight order
    pooled = L.Lambda(lambda p: tf.reshape(tf.stack(p, axis=2), [-1, 2 * p[0].shape[-1]]))(
        [max_pool, mean_pool])
    h = bn(9)(pooled)
    h = L.Dropout(0.5)(h)
    penultimate = bn(10)(L.Dense(backend_units, activation="relu", name="dense")(h))
    logits = L.Dense(n_tags, name="dense_1")(L.Dropout(0.5)(penultimate))
    taggram = L.Activation("sigmoid", name="taggram")(logits)
    return keras.Model(x, {"taggram": taggram, "penultimate": penultimate,
                           "mean_pool": mean_pool, "max_pool": max_pool}, name="musicnn")


def load_weights(model, variables: dict[str, np.ndarray]) -> None:
    """Set every weight of ``model`` from TF1 checkpoint ``variables`` (``scope/name``)."""
    names = {"kernel": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
             "moving_mean": "moving_mean", "moving_variance": "moving_variance"}
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for weight in layer.weights:
            key = f"{layer.name}/{names[weight.name.split('/')[-1].split(':')[0]]}"
            if key not in variables:
                raise KeyError(f"checkpoint has no {key}")
            if tuple(variables[key].shape) != tuple(weight.shape):
                raise ValueError(f"{key}: checkpoint {variables[key].shape} vs model {weight.shape}")
            values.append(variables[key])
            used.add(key)
        layer.set_weights(values)
    unused = set(variables) - used
    if unused:
        raise ValueError(f"checkpoint variables not used by the port: {sorted(unused)[:5]}")
