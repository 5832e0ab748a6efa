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


def test_dot_segments_are_resolved_in_uris_and_song_ids(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "m.csv").write_text("uri\nx/./a.ogg\n../y/b.ogg\ns3://bk/p/../c.ogg\n")
    a, b, c = load_catalog(str(tmp_path / "m" / "m.csv"))
    assert (a.song_id, a.uri) == ("x/a", f"{tmp_path}/m/x/a.ogg")
    assert (b.song_id, b.uri) == ("../y/b", f"{tmp_path}/y/b.ogg")
    assert (c.song_id, c.uri) == ("bk/c", "s3://bk/c.ogg")


def test_parquet_manifest(tmp_path):
    import pandas as pd

    pd.DataFrame({"uri": ["a.wav", "b.wav"], "song_id": ["s1", "s2"]}).to_parquet(tmp_path / "m.parquet")
    assert [s.song_id for s in load_catalog(str(tmp_path / "m.parquet"))] == ["s1", "s2"]


@pytest.mark.parametrize("content,message", [
    ("uri\na.wav\nb/../a.wav\n", "duplicate song_id"),  # one file, two names: normalised
    ("uri\ns3://bucket/../other/a.wav\n", "climbs above its bucket"),
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


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("manifest_bytes", [64 << 20, 0])  # one task / Ray Data's readers
def test_catalog_datasets_equal_the_in_memory_catalogs(ray_session, tmp_path, monkeypatch,
                                                       manifest_bytes):
    import pandas as pd

    from pipeline.runtime import catalog
    from pipeline.runtime.catalog import catalog_dataset

    monkeypatch.setattr(catalog, "_SMALL_MANIFEST_BYTES", manifest_bytes)

    for rel in ("jazz/a.wav", "jazz/deep/b.flac", "rock/c.mp3", "rock/notes.txt"):
        _touch(tmp_path / "songs" / rel)
    (tmp_path / "m.csv").write_text("uri,label,artist,split,extra\nx/a.ogg,jazz,Miles,test,1\n"
                                    "/abs/b.wav,rock,,,2\ns3://b/c.opus, rock ,,valid,3\n")
    pd.DataFrame({"uri": ["a.wav", "b.wav"], "song_id": ["s1", "s2"],
                  "split": pd.Categorical(["train", None])}).to_parquet(tmp_path / "m.parquet")
    for source, kwargs in ((tmp_path / "songs", {"labels_from_folders": True}),
                           (tmp_path / "m.csv", {}), (tmp_path / "m.parquet", {}),
                           (tmp_path / "songs" / "rock" / "c.mp3", {})):
        rows, n = catalog_dataset(str(source), **kwargs)
        got = sorted(rows.take_all(), key=lambda r: r["song_id"])
        # a catalog's songs have no tries yet (a run adds them from its table)
        want = sorted(({k: v for k, v in vars(s).items() if k != "tries"}
                       for s in load_catalog(str(source), **kwargs)), key=lambda r: r["song_id"])
        assert got == want and n == len(want), source


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("content,message", [
    ("uri,song_id\na.wav,x\nb.wav,x\nc.wav,y\nd.wav,y\ne.wav,z\n", "2 duplicate song_id.*: x, y"),
    ("uri,split\na.wav,holdout\n", "split 'holdout'"),
    ("uri\na.wav\n\"\"\n", "empty uri"),
])
def test_a_bad_catalog_dataset_stops_before_work_with_one_line(ray_session, tmp_path, capsys,
                                                               content, message):
    from pipeline import cli
    from pipeline.runtime.catalog import catalog_dataset

    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(CatalogError, match=message):
        catalog_dataset(str(tmp_path / "m.csv"))
    assert cli.main(["extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("genres extract: error:")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("manifest_bytes,rows_in_one_task", [(64 << 20, 0), (0, 10**6), (0, 0)])
def test_duplicates_are_found_by_each_path(ray_session, tmp_path, monkeypatch, manifest_bytes,
                                           rows_in_one_task):
    """A small manifest is read and checked by one task; a larger catalog's blocks by one
    task; a catalog of millions by a groupby: the same answer."""
    from pipeline.runtime import catalog

    monkeypatch.setattr(catalog, "_SMALL_MANIFEST_BYTES", manifest_bytes)
    monkeypatch.setattr(catalog, "_UNIQUE_IN_ONE_TASK", rows_in_one_task)
    rows = "".join(f"s{i}.wav,{i % 40}\n" for i in range(45))  # ids 0..4 twice
    (tmp_path / "m.csv").write_text("uri,song_id\n" + rows)
    with pytest.raises(CatalogError, match=r"5 duplicate song_id.*: 0, 1, 2, 3, 4"):
        catalog.catalog_dataset(str(tmp_path / "m.csv"))
    (tmp_path / "ok.csv").write_text("uri,song_id\n" + rows.replace(",0\n", ",x\n", 1))
    with pytest.raises(CatalogError, match=r"4 duplicate song_id.*: 1, 2, 3, 4"):
        catalog.catalog_dataset(str(tmp_path / "ok.csv"))


@pytest.mark.ray
@pytest.mark.slow
def test_without_is_an_anti_join(ray_session):
    import ray

    from pipeline.runtime.catalog import without

    rows = ray.data.from_items([{"song_id": f"s{i}", "uri": f"/{i}"} for i in range(100)])
    done = ray.data.from_items([{"song_id": f"s{i}"} for i in range(0, 100, 3)] * 2)
    left = without(rows, done, partitions=3).take_all()
    assert sorted(r["song_id"] for r in left) == sorted(f"s{i}" for i in range(100) if i % 3)
    assert without(rows, None, partitions=3) is rows
