"""The embed model's pooled head is a logistic regression of each song's pooled patches."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # TensorFlow (no Ray)


def test_pooled_head_is_a_softmax_of_standardised_song_means_and_stds(tmp_path):
    from pipeline.features.bags import make_bags, pool_bags
    from pipeline.models.cnn import build_model, custom_objects, model_level, pooled_l2
    from pipeline.models.keras import tf_keras

    keras = tf_keras()
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(11, 6)).astype(np.float32)
    frames, mask, _ = make_bags(x, np.array(list("aaaaabbbccd")))  # 5, 3, 2 and 1 patches
    patch = (x.mean(0), x.std(0))
    pooled = pool_bags((frames - patch[0]) / patch[1], mask)
    song = (pooled.mean(0), pooled.std(0))
    model = build_model("embed", (6,), 3, normalization=patch, head="pooled",
                        song_normalization=song, pooled_l2=pooled_l2(98))
    assert model_level("embed", "pooled") == "song" and model_level("embed", "dense") == "frame"
    assert pooled_l2(98) == pytest.approx(1 / (2 * 0.01 * 98))
    w, b = model.get_layer("genre").get_weights()
    w[:] = rng.normal(size=w.shape)  # not the initial weights: every input counts
    model.get_layer("genre").set_weights([w, b])
    logits = (pooled - song[0]) / song[1] @ w + b
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(model.predict([frames, mask], verbose=0), expected, atol=1e-4)
    # padding is left out: a song alone in a shorter bag scores the same
    single = model.predict([frames[3:, :1], mask[3:, :1]], verbose=0)
    assert np.allclose(single, expected[3:], atol=1e-4)
    # the saved model loads in Keras' safe mode (what scoring does) and computes the same
    model.save(tmp_path / "model.keras")
    again = keras.models.load_model(tmp_path / "model.keras", compile=False, safe_mode=True,
                                    custom_objects=custom_objects())
    assert np.allclose(again.predict([frames, mask], verbose=0), expected, atol=1e-4)
