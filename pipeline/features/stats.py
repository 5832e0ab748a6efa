"""Per-band mean and standard deviation, accumulated in parts and combined (pure numpy).

Each part keeps (count, mean, M2) in float64 and two parts combine with the parallel update of
Chan, Golub & LeVeque (1979), so the statistics of a catalog come out of the cluster in one
pass, in any order, without the cancellation of a float32 sum of squares.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BandStats:
    """Statistics per band: ``count`` values each, their ``mean`` and ``m2`` (the sum of
    squared deviations from the mean), both float64 arrays [bands]."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> "BandStats":
        """Statistics of rows ``x`` [n, bands, ...]: per band (axis 1) over every other axis,
        e.g. frames [n, n_mels, t] or embeddings [n, dims]."""
        x = np.asarray(x, np.float64)
        axes = (0, *range(2, x.ndim))
        count = x.size // x.shape[1] if x.size else 0
        if not count:
            return cls(0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
        mean = x.mean(axis=axes)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return cls(count, mean, np.square(x - mean.reshape(shape)).sum(axis=axes))

    def combine(self, other: "BandStats") -> "BandStats":
        """The statistics of both parts' values together (Chan et al.'s parallel update)."""
        if not other.count:
            return self
        if not self.count:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return BandStats(n, self.mean + delta * (other.count / n),
                         self.m2 + other.m2 + np.square(delta) * (self.count * other.count / n))

    def std(self) -> np.ndarray:
        """Population standard deviation per band."""
        return np.sqrt(self.m2 / max(self.count, 1))

    def scale(self) -> np.ndarray:
        """What to divide each band by: its standard deviation, or 1 where the band is
        (nearly) constant (std <= 1e-6), as scikit-learn's StandardScaler does. A band that
        never varies on the train rows but does elsewhere (a musicnn unit silent on every
        train song) would otherwise turn 0.05 into 5e4."""
        std = self.std()
        return np.where(std > 1e-6, std, 1.0)

    def to_list(self) -> list[float]:
        """``[count, *mean, *m2]``: a flat list of floats, an accumulator Ray Data can keep in
        an Arrow column between tasks."""
        return [float(self.count), *self.mean.tolist(), *self.m2.tolist()]

    @classmethod
    def from_list(cls, value: list[float]) -> "BandStats":
        bands = (len(value) - 1) // 2
        value = np.asarray(value, np.float64)
        return cls(int(value[0]), value[1:1 + bands], value[1 + bands:])
