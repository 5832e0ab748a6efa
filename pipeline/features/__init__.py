"""Pure feature computation: arrays in, arrays out (no I/O, no Ray)."""

from pipeline.features.spec import FeatureSpec
from pipeline.features.frames import frame_audio, frame_features

__all__ = ["FeatureSpec", "frame_audio", "frame_features"]
