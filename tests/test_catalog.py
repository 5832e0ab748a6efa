import pytest

from pipeline.errors import CatalogError
from pipeline.storage.catalog import load_catalog


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_folder_with_labels_from_folders(tmp_path):
    for rel in ("jazz/a.wav", "jazz/b.flac", "rock/c.mp3", "rock/notes.txt"):
        _touch(tmp_path / rel)
    songs = load_catalog(str(tmp_path), labels_from_folders=True)
    assert [(s.song_id, s.label) for s in songs] == [("jazz/a", "jazz"), ("jazz/b", "jazz"),
                                                     ("rock/c", "rock")]


def test_manifest_resolves_relative_uris_and_reads_optional_columns(tmp_path):
    _touch(tmp_path / "x" / "a.ogg")
    (tmp_path / "m.csv").write_text("uri,label,artist,split\nx/a.ogg,jazz,Miles,test\n"
                                    "/abs/b.wav,rock,,\n")
    a, b = load_catalog(str(tmp_path / "m.csv"))
    assert (a.song_id, a.uri, a.label, a.artist, a.split) == \
        ("x/a", f"{tmp_path}/x/a.ogg", "jazz", "Miles", "test")
    assert (b.song_id, b.uri, b.artist, b.split) == ("abs/b", "/abs/b.wav", None, None)


def test_parquet_manifest(tmp_path):
    import pandas as pd

    pd.DataFrame({"uri": ["a.wav", "b.wav"], "song_id": ["s1", "s2"]}).to_parquet(tmp_path / "m.parquet")
    assert [s.song_id for s in load_catalog(str(tmp_path / "m.parquet"))] == ["s1", "s2"]


@pytest.mark.parametrize("content,message", [
    ("uri\na.wav\nb/../a.wav\n", None),
    ("uri,song_id\na.wav,x\nb.wav,x\n", "duplicate song_id"),
    ("path\na.wav\n", "needs a 'uri' column"),
    ("uri,split\na.wav,holdout\n", "split"),
])
def test_bad_manifests_are_rejected_before_work(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    if message is None:
        assert len(load_catalog(str(tmp_path / "m.csv"))) == 2
        return
    with pytest.raises(CatalogError, match=message):
        load_catalog(str(tmp_path / "m.csv"))


def test_missing_and_empty_catalogs(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(str(tmp_path / "nope"))
    with pytest.raises(CatalogError, match="no audio"):
        load_catalog(str(tmp_path))


@pytest.mark.parametrize("name,content", [("m.csv", bytes(range(256)) * 40),
                                          ("m.parquet", b"PAR1 definitely not parquet")])
def test_unreadable_manifest_is_one_clear_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CatalogError, match="manifest"):
        load_catalog(str(tmp_path / name))
