"""The LiteRT copy that scoring runs on CPU computes what the Keras model computes."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # TensorFlow (no Ray)

SHAPES = {"cnn2d": (128, 216), "cnn1d": (20, 216), "cnn1d_mel100ms": (128, 216),
          "dnn": (20, 216), "embed": (200,)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_frame_model_converts_and_matches_keras(name):
    from pipeline.models.cnn import MODELS
    from pipeline.models.lite import LiteModel, to_tflite

    build, _, level = MODELS[name]
    assert level == "frame"
    model = build(SHAPES[name], 3)
    rng = np.random.default_rng(0)
    # train-mode batch norm once, so its moving statistics are not the identity
    x = rng.normal(size=(21, *SHAPES[name])).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, rng.integers(0, 3, 21), epochs=1, verbose=0)
    lite = LiteModel(to_tflite(model))
    expected = model.predict(x, verbose=0)
    # 21 rows: two full batches of 8 and a last one of 5, then a smaller call re-plans
    assert np.allclose(lite.predict(x), expected, atol=1e-5)
    assert np.allclose(lite.predict(x[:3]), expected[:3], atol=1e-5)
    assert lite.predict(x[:0]).shape == (0, 3)


def test_the_interpreter_loads_without_tensorflow(tmp_path):
    """Scoring actors import LiteRT, not TensorFlow (15 s and ~700 MB per actor)."""
    import subprocess
    import sys

    from pipeline.models.cnn import build_dnn
    from pipeline.models.lite import to_tflite

    path = tmp_path / "model.tflite"
    path.write_bytes(to_tflite(build_dnn((20, 216), 3)))
    code = ("import sys, numpy as np; from pipeline.models.lite import LiteModel; "
            f"m = LiteModel(open({str(path)!r}, 'rb').read()); "
            "p = m.predict(np.zeros((2, 20, 216), np.float32)); "
            "assert p.shape == (2, 3) and 'tensorflow' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
