"""Frame models: pure Keras builders ``build_<name>(input_shape, n_classes) -> Model``."""

from __future__ import annotations

import functools

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

    return {"genres>MeanStd": MeanStd}


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


def build_cnn2d(input_shape: tuple[int, int], n_classes: int, *, l2: float = 1e-4,
                dropout: float = 0.3):
    """A small 2D CNN on one log-mel frame.

    Parameters
    ----------
    input_shape : (n_mels, t)
        One normalised log-mel frame (e.g. 128 bands x 216 columns for 5 s).
    n_classes : int
        Genres; the output is a softmax over them, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs = keras.Input(shape=tuple(input_shape), name="logmel")
    x = layers.Reshape((*input_shape, 1))(inputs)
    x = _conv_stack(layers, x, layers.Conv2D, layers.MaxPooling2D,
                    [(16, 3), (32, 3), (64, 3), (64, 3)], reg)
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="cnn2d")


def build_dnn(input_shape: tuple[int, int], n_classes: int, *, l2: float = 1e-4,
              dropout: float = 0.3):
    """Dense layers on the mean and standard deviation over time of an MFCC frame.

    Parameters
    ----------
    input_shape : (n_mfcc, t)
        One normalised MFCC frame; the model pools it to a (2 * n_mfcc,) vector itself, so the
        bundle scores raw frames like every other frame model.
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs = keras.Input(shape=tuple(input_shape), name="mfcc")
    x = custom_objects()["genres>MeanStd"](name="mean_std")(inputs)
    for units in (256, 128):
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg)(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="dnn")


def build_cnn1d(input_shape: tuple[int, int], n_classes: int, *, l2: float = 1e-4,
                dropout: float = 0.4):
    """Conv1D over time on an MFCC frame (batch norm, pooling, dropout, L2).

    Parameters
    ----------
    input_shape : (n_mfcc, t)
        One normalised MFCC frame (20 x 216 for 5 s); coefficients are the channels.
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs = keras.Input(shape=tuple(input_shape), name="mfcc")
    x = layers.Permute((2, 1))(inputs)  # [t, n_mfcc]
    x = _conv_stack(layers, x, layers.Conv1D, layers.MaxPooling1D,
                    [(64, 5), (128, 5), (128, 3)], reg)
    x = layers.Dropout(dropout)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="cnn1d")


def build_embed(input_shape: tuple[int], n_classes: int, *, units: int = 128, l2: float = 1e-3,
                dropout: float = 0.5):
    """A small dense head on pretrained embeddings.

    Parameters
    ----------
    input_shape : (n_dims,)
        One normalised embedding (200 for musicnn's penultimate layer).
    n_classes : int
        Softmax outputs, shape (batch, n_classes).
    """
    keras = tf_keras()
    layers, reg = keras.layers, keras.regularizers.l2(l2)
    inputs = keras.Input(shape=tuple(input_shape), name="embedding")
    x = layers.Dropout(0.2)(inputs)
    x = layers.Dense(units, activation="relu", kernel_regularizer=reg)(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _genre(layers, x, n_classes, reg), name="embed")


# name -> (builder, feature column it reads)
MODELS = {"cnn2d": (build_cnn2d, "logmel"), "cnn1d": (build_cnn1d, "mfcc"),
          "dnn": (build_dnn, "mfcc"), "embed": (build_embed, "embedding")}


def build_model(name: str, input_shape: tuple[int, int], n_classes: int):
    """Build the registered model ``name``."""
    if name not in MODELS:
        raise ParameterError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name][0](input_shape, n_classes)


def feature_column(name: str) -> str:
    """The feature column (``logmel`` or ``mfcc``) model ``name`` reads."""
    if name not in MODELS:
        raise ParameterError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name][1]
