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
