"""CPU inference of trained frame models through LiteRT (TensorFlow Lite, XNNPACK kernels).

On the CPUs we score on, Keras ``predict`` of the cnn2d frame model costs about 4x the core time
of the same network run by the LiteRT interpreter (3600 log-mel frames: 49 core-s vs 10.6 core-s,
outputs equal to 1e-7), and the interpreter imports in 0.2 s where TensorFlow takes 15 s. So a
frame bundle carries a converted copy of its model (converted with TensorFlow at training time)
and scoring on CPU runs that; training, GPU scoring and song-level (``mil``) models stay Keras.
"""

from __future__ import annotations

import numpy as np

from pipeline.models.keras import native_stderr_quiet, tf_keras


def to_tflite(model) -> bytes:
    """A float32 TFLite flatbuffer of a tf-keras model with one input and one output."""
    tf_keras()
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


class LiteModel:
    """A TFLite copy of a one-input model, called like ``keras.Model.predict``.

    ``threads`` is the interpreter's thread count (one per CPU the caller holds). Batches of 8
    rows ran fastest per row on one thread (2.9 ms per cnn2d frame; 3.2-3.5 ms at 16 and 64).
    """

    def __init__(self, flatbuffer: bytes, *, threads: int = 1, batch_size: int = 8):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
        with native_stderr_quiet():  # the first allocation creates the XNNPACK delegate
            self.interpreter.allocate_tensors()
        (self.input,), (self.output,) = (self.interpreter.get_input_details(),
                                         self.interpreter.get_output_details())
        self.batch_size = batch_size
        self.rows = 0  # the batch size the interpreter is allocated for

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[n, ...input shape] float32 -> [n, ...output shape], in batches of ``batch_size``."""
        out = []
        for start in range(0, len(x), self.batch_size):
            chunk = np.ascontiguousarray(x[start:start + self.batch_size], np.float32)
            if len(chunk) != self.rows:  # re-planning costs ~0.2 ms; padding would cost rows
                self.interpreter.resize_tensor_input(self.input["index"], list(chunk.shape))
                self.interpreter.allocate_tensors()
                self.rows = len(chunk)
            self.interpreter.set_tensor(self.input["index"], chunk)
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output["index"]).copy())
        if not out:
            return np.zeros((0, *self.output["shape"][1:]), np.float32)
        return np.concatenate(out)
