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
    y = load_audio(str(shared_data / folder / f"{song}.ogg"), sample_rate=16000)
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


def _unpack(cache: str, out) -> None:
    import os

    os.environ["GENRES_CACHE"] = cache
    from pipeline.storage.weights import _unpacked

    out.put(str(_unpacked("MSD_musicnn")))


def test_processes_unpacking_the_weights_at_once_all_get_a_whole_copy(tmp_path):
    # Extract tasks on a fresh node unpack the weights at the same time: once they shared one
    # temporary folder, a rename failed and a checkpoint was read half-written.
    import multiprocessing
    import shutil
    import zipfile

    from pipeline.storage.weights import WHEEL, fetch_wheel

    shutil.copy(fetch_wheel(), tmp_path / WHEEL)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_unpack, args=(str(tmp_path), out)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    target = tmp_path / "musicnn-0.1.0" / "MSD_musicnn"
    assert {out.get(timeout=5) for _ in procs} == {str(target)}
    with zipfile.ZipFile(tmp_path / WHEEL) as z:
        for name in z.namelist():
            if name.startswith("musicnn/MSD_musicnn/."):
                assert (target / name.rsplit("/", 1)[1]).read_bytes() == z.read(name)
    assert sorted(p.name for p in (tmp_path / "musicnn-0.1.0").iterdir()) == ["MSD_musicnn"]
