"""A corpus of broken and awkward audio files, with the outcome each must have."""

import pathlib

import numpy as np
import soundfile as sf


def make_corpus(root: pathlib.Path, seed: int = 0) -> tuple[pathlib.Path, dict[str, str | None]]:
    """Write the files and a manifest; returns (manifest, {song_id: error kind or None})."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def noise(seconds, sr, channels=1):
        return (0.1 * rng.standard_normal((int(seconds * sr), channels))).astype(np.float32)

    expected = {}
    sf.write(root / "good.wav", noise(6.0, 22050), 22050)
    expected["good"] = None
    (root / "empty.wav").write_bytes(b"")
    expected["empty"] = "decode"
    (root / "random.flac").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    expected["random"] = "decode"
    (root / "text.mp3").write_text("this is a text file, not an mp3\n" * 200)
    expected["text"] = "decode"
    sf.write(root / "whole.ogg", noise(8.0, 22050), 22050, format="OGG", subtype="VORBIS")
    data = (root / "whole.ogg").read_bytes()
    (root / "truncated.ogg").write_bytes(data[: len(data) // 3])
    expected["truncated"] = "truncated"
    nan = noise(3.0, 22050)
    nan[1000:1010] = np.nan
    sf.write(root / "nan.wav", nan, 22050, subtype="FLOAT")
    expected["nan"] = "content"
    sf.write(root / "clip.wav", noise(0.5, 22050), 22050)
    expected["clip"] = None
    sf.write(root / "six96k.wav", noise(6.0, 96000, channels=6), 96000)
    expected["six96k"] = None
    sf.write(root / "low8k.wav", noise(6.0, 8000), 8000)
    expected["low8k"] = None
    (root / "folder.wav").mkdir()
    expected["folder"] = "decode"
    expected["missing"] = "missing"
    names = {"good": "good.wav", "empty": "empty.wav", "random": "random.flac",
             "text": "text.mp3", "truncated": "truncated.ogg", "nan": "nan.wav",
             "clip": "clip.wav", "six96k": "six96k.wav", "low8k": "low8k.wav",
             "folder": "folder.wav", "missing": "missing.wav"}
    manifest = root / "manifest.csv"
    manifest.write_text("uri,song_id\n" + "".join(f"{names[k]},{k}\n" for k in expected))
    return manifest, expected


def tiny_features(root: pathlib.Path, songs: list[dict], *, songs_per_part: int = 10,
                  seed: int = 0, spec=None) -> str:
    """A feature directory of 1 s frames (or of ``spec``'s) from noise songs, without Ray.

    ``songs``: dicts with ``song_id``, ``seconds`` and optional ``label``, ``split``,
    ``artist``; a label's noise is louder the later it sorts, so the labels can be learnt.
    """
    from pipeline.extract import extract_shard
    from pipeline.features import FeatureSpec
    from pipeline.storage.catalog import Song
    from pipeline.storage.shards import FeatureStore

    rng = np.random.default_rng(seed)
    spec = spec or FeatureSpec(frame_seconds=1.0)
    out = str(root / "features")
    FeatureStore(out).prepare(spec)
    labels = sorted({s["label"] for s in songs if s.get("label")})
    catalog = []
    for i, song in enumerate(songs):
        gain = 0.05 * (1 + labels.index(song["label"])) if song.get("label") else 0.05
        path = root / f"song{i:05d}.wav"
        sf.write(path, (gain * rng.standard_normal(int(song["seconds"] * 22050))).astype(np.float32),
                 22050)
        catalog.append(Song(song["song_id"], str(path), label=song.get("label"),
                            artist=song.get("artist"), split=song.get("split")))
    adds = [extract_shard(catalog[start:start + songs_per_part], spec, out, f"part-{part:05d}",
                          run_id="corpus")["add"]
            for part, start in enumerate(range(0, len(catalog), songs_per_part))]
    FeatureStore(out).commit(adds, run_id="corpus")
    return out


def current(bundle) -> pathlib.Path:
    """The folder of a bundle's current version (local bundles)."""
    from pipeline.storage.bundle import read_bundle

    return pathlib.Path(read_bundle(str(bundle)).root)
