"""FeatureSpec: the frozen, fingerprinted settings that made a feature table."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import ClassVar

from pipeline.errors import ParameterError

_DTYPES = ("float32", "float16")


class _SpecIO:
    """JSON round trip and fingerprint shared by the spec dataclasses."""

    kind: ClassVar[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ParameterError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """Stable 16-hex-digit hash of the settings (and the kind, for non-frame specs).

        A setting added later (``_ADDED``) counts only away from its default, so directories
        and bundles made before it existed keep their fingerprint."""
        added = getattr(self, "_ADDED", {})
        canonical = {k: (float(v) if isinstance(v, float) and math.isfinite(v) else v)
                     for k, v in self.to_dict().items() if k not in added or v != added[k]}
        if self.kind != "frames":
            canonical["kind"] = self.kind
        blob = json.dumps(canonical, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_record(self) -> dict:
        """What ``_spec.json`` and a bundle's ``spec.json`` hold."""
        return {"kind": self.kind, "spec": self.to_dict(), "fingerprint": self.fingerprint()}


@dataclasses.dataclass(frozen=True)
class FeatureSpec(_SpecIO):
    """Settings for framing and MFCC/log-mel extraction.

    Times are in seconds, rates in Hz; ``hop_seconds=None`` means frames do not overlap.
    """

    kind: ClassVar[str] = "frames"

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    n_mfcc: int = 20
    fmax: float | None = None
    frame_seconds: float = 5.0
    hop_seconds: float | None = None
    offset_seconds: float = 0.0
    max_seconds: float | None = None
    dtype: str = "float32"

    def __post_init__(self):
        if self.sample_rate <= 0:
            raise ParameterError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.frame_seconds <= 0:
            raise ParameterError(f"frame_seconds must be positive, got {self.frame_seconds}")
        if self.hop_seconds is not None and self.hop_seconds <= 0:
            raise ParameterError(f"hop_seconds must be positive, got {self.hop_seconds}")
        if self.offset_seconds < 0:
            raise ParameterError(f"offset_seconds must be >= 0, got {self.offset_seconds}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ParameterError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.dtype not in _DTYPES:
            raise ParameterError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if not 0 < self.n_mfcc <= self.n_mels:
            raise ParameterError(f"n_mfcc must be in 1..n_mels ({self.n_mels}), got {self.n_mfcc}")

    @property
    def frame_samples(self) -> int:
        """Samples in one frame at ``sample_rate``."""
        return int(round(self.frame_seconds * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        """Samples between frame starts."""
        hop = self.frame_seconds if self.hop_seconds is None else self.hop_seconds
        return max(1, int(round(hop * self.sample_rate)))

    @property
    def frame_columns(self) -> int:
        """STFT columns per frame (centred STFT: 1 + samples // hop_length)."""
        return 1 + self.frame_samples // self.hop_length

    @property
    def mfcc_shape(self) -> tuple[int, int]:
        return (self.n_mfcc, self.frame_columns)

    @property
    def logmel_shape(self) -> tuple[int, int]:
        return (self.n_mels, self.frame_columns)

    def columns(self) -> dict[str, tuple[int, ...]]:
        """Tensor columns of a frame row and their shapes."""
        return {"mfcc": self.mfcc_shape, "logmel": self.logmel_shape}


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec(_SpecIO):
    """Pretrained musicnn embeddings, one row per 3 s patch (16 kHz, 96-band log-mel input).

    ``weights`` names the weights (a hash of the musicnn wheel); ``model`` is "MSD" (Million
    Song Dataset, 50 tags) or "MTT" (MagnaTagATune, 50 tags). ``pools`` also keeps the
    network's mid-end features pooled over the patch (mean and max, 753 each), which the
    musicnn authors use for transfer learning: 1,506 more values a patch.
    """

    kind: ClassVar[str] = "musicnn"
    sample_rate: ClassVar[int] = 16000
    _ADDED: ClassVar[dict] = {"pools": False}

    model: str = "MSD"
    weights: str = ""
    offset_seconds: float = 0.0
    max_seconds: float | None = None
    dtype: str = "float32"
    pools: bool = False

    def __post_init__(self):
        if self.model not in ("MSD", "MTT"):
            raise ParameterError(f"musicnn model must be MSD or MTT, got {self.model!r}")
        if self.dtype not in _DTYPES:
            raise ParameterError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.offset_seconds < 0:
            raise ParameterError(f"offset_seconds must be >= 0, got {self.offset_seconds}")

    def columns(self) -> dict[str, tuple[int, ...]]:
        """``embedding``: the 200-unit penultimate layer; ``taggram``: the 50 tag probabilities;
        with ``pools``, ``pools``: the mid-end's mean_pool then max_pool (753 + 753)."""
        pools = {"pools": (1506,)} if self.pools else {}
        return {"embedding": (200,), "taggram": (50,), **pools}


@dataclasses.dataclass(frozen=True)
class TableSpec(_SpecIO):
    """Frame features a user already has: one table row per frame (``train --frame-table``).

    ``features`` are the table's numeric columns in model input order; ``name_column`` holds
    the frame name and ``song_pattern`` the regex that finds its song in that name.
    """

    kind: ClassVar[str] = "table"

    features: tuple[str, ...] = ()
    name_column: str = "filename"
    song_pattern: str = ""

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))  # JSON gives a list
        if not self.features:
            raise ParameterError("a frame table needs at least one numeric feature column")

    def columns(self) -> dict[str, tuple[int, ...]]:
        """``features``: one vector per frame, in ``features`` order."""
        return {"features": (len(self.features),)}


SPECS = {cls.kind: cls for cls in (FeatureSpec, EmbeddingSpec, TableSpec)}


def spec_from_record(record: dict):
    """The spec of a ``_spec.json`` / bundle ``spec.json`` record (older records: frames)."""
    kind = record.get("kind", "frames")
    if kind not in SPECS:
        raise ParameterError(f"unknown feature kind {kind!r}; known: {sorted(SPECS)}")
    return SPECS[kind].from_dict(record["spec"])
