"""How scoring sizes its model actors (light LiteRT actors take decoding in, TensorFlow ones
not), and what they load."""

from types import SimpleNamespace

import pytest

from pipeline.errors import BundleError
from pipeline.runtime.score import _TF_ACTOR_MEMORY, _model_actors
from pipeline.storage.bundle import read_lite_model


def bundle(level="frame", kind="audio"):
    return SimpleNamespace(level=level, spec=SimpleNamespace(kind=kind))


def actors(b, *, cpus=8, gpus=0, use_gpu=False, precomputed=False, aggregator="mean"):
    return _model_actors(b, cpus, gpus, use_gpu=use_gpu, precomputed=precomputed,
                         aggregator=aggregator)


def test_a_litert_frame_model_gets_one_actor_per_cpu_shaped_like_a_decode_task():
    # one CPU and no other key: these actors decode their songs themselves
    assert actors(bundle()) == (8, {"num_cpus": 1})
    assert actors(bundle(kind="musicnn"), precomputed=True) == (8, {"num_cpus": 1})
    assert actors(bundle(), cpus=1) == (1, {"num_cpus": 1})


@pytest.mark.parametrize("case", [
    dict(b=bundle(level="song")),  # mil runs Keras
    dict(b=bundle(), aggregator="sequence"),  # the GRU runs Keras
    dict(b=bundle(kind="musicnn")),  # musicnn's network on audio runs Keras
])
def test_tensorflow_actors_reserve_memory_and_leave_decoding_to_tasks(case):
    b = case.pop("b")
    assert actors(b, **case) == (4, {"num_cpus": 1, "memory": _TF_ACTOR_MEMORY})


def test_on_gpus_there_is_one_actor_per_gpu():
    assert actors(bundle(), gpus=2, use_gpu=True) == (
        2, {"num_cpus": 1, "num_gpus": 1, "memory": _TF_ACTOR_MEMORY})


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a flatbuffer"])
def test_a_damaged_lite_copy_is_refused_by_name_with_its_fix(tmp_path, content):
    # LiteRT's own error ("`model_path` or `model_content`") names neither the file nor a fix
    (tmp_path / "model.tflite").write_bytes(content)
    with pytest.raises(BundleError, match=r"model\.tflite is not a TFLite model .*delete it"):
        read_lite_model(SimpleNamespace(root=str(tmp_path)))
