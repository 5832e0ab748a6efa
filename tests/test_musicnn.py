"""The Keras port of musicnn against the original implementation's stored outputs."""

import numpy as np
import pytest

from pipeline.features.musicnn import musicnn_patches

pytestmark = pytest.mark.slow  # TensorFlow


@pytest.fixture(scope="module")
def nets():
    from pipeline.models.musicnn import build_musicnn, load_weights
    from pipeline.storage.weights import read_checkpoint, read_tags

    out = {}
    for name in ("MSD", "MTT"):
        tags = read_tags(name)
        model = build_musicnn(len(tags))
        load_weights(model, read_checkpoint(name))
        out[name] = (model, tags)
    return out


@pytest.mark.parametrize("name", ["MSD", "MTT"])
@pytest.mark.parametrize("song", ["classical.00001", "jazz.00001"])
def test_port_matches_original_on_its_exact_inputs(nets, shared_data, name, song):
    ref = np.load(shared_data / "musicnn_reference" / f"{song}.{name}_musicnn.npz")
    model, tags = nets[name]
    assert list(ref["tags"]) == tags
    out = model.predict(ref["patches"], verbose=0)
    assert np.abs(out["taggram"] - ref["taggram"]).max() < 1e-3
    assert np.abs(out["penultimate"] - ref["penultimate"]).max() < 1e-3
    assert np.abs(out["mean_pool"] - ref["mean_pool"]).max() < 1e-3


@pytest.mark.parametrize("song,folder,top", [
    ("classical.00001", "gtzan3/classical", "instrumental"), ("jazz.00001", "gtzan3/jazz", "jazz"),
    ("rock.00001", "gtzan3/rock", "rock")])
def test_port_from_audio_end_to_end(nets, shared_data, song, folder, top):
    from pipeline.storage.audio import load_audio

    ref = np.load(shared_data / "musicnn_reference" / f"{song}.MSD_musicnn.npz")
    y, rate = load_audio(str(shared_data / folder / f"{song}.ogg"), sample_rate=16000)
    patches, padded = musicnn_patches(y)
    assert patches.shape == ref["patches"].shape and not padded
    finite = np.isfinite(ref["patches"])
    assert np.abs(patches - ref["patches"])[finite].max() < 0.01  # the original's float16 cast
    model, tags = nets["MSD"]
    taggram = model.predict(patches, verbose=0)["taggram"]
    assert tags[taggram.mean(axis=0).argmax()] == top
    if finite.all():  # loud songs overflow to inf in the original: no tight bound there
        assert np.abs(taggram - ref["taggram"]).max() < 2e-3


def test_patches_of_a_short_song_are_padded():
    patches, padded = musicnn_patches(np.zeros(16000, np.float32))
    assert patches.shape == (1, 187, 96) and padded and np.isfinite(patches).all()
