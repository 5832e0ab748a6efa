"""A bundle opened for scoring: songs' model inputs in, their song scores and genres out.

One object does what every scoring path needs, whatever the bundle: musicnn's network where
the input is audio patches and the bundle's head reads one of its columns; normalisation;
the frame model (LiteRT or Keras) or the song-level model over a bag; the aggregator
(``sequence`` included); the bundle's calibration. Scoring actors
(:class:`pipeline.runtime.score.SongScorer`) and training's evaluation
(:class:`pipeline.runtime.evaluation.SongEvaluator`, on the fit before its bundle is written)
are the I/O around it; no Ray here.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.extract import musicnn_column
from pipeline.features.bags import make_bags
from pipeline.models.aggregate import aggregate, decide


class SongModel:
    """A bundle's model with its aggregator inside (see the module docstring).

    ``bundle``: an opened :class:`pipeline.storage.bundle.Bundle` (or a zero-shot one:
    musicnn's own tags). ``lite_model``: its LiteRT flatbuffer, to run a frame model in
    LiteRT rather than Keras. ``keras_model``: its Keras model, built by the caller (training's
    evaluation, before the bundle's files are written), else loaded from the bundle.
    ``from_audio``: songs come as musicnn's input patches [n, 187, 96] (musicnn bundles), not
    as the feature column a feature directory holds."""

    def __init__(self, bundle, aggregator: str, *, lite_model: bytes | None = None,
                 keras_model=None, from_audio: bool = True, zero_shot: str | None = None):
        from pipeline.storage.bundle import SEQUENCE_FILE, load_keras_model

        self.bundle, self.aggregator = bundle, aggregator
        self.musicnn = self.model = self.sequence = None
        if zero_shot:  # musicnn's own tags, no trained head
            if from_audio:  # from a feature directory the taggram is already there
                from pipeline.extract import pretrained_musicnn

                self.musicnn = pretrained_musicnn(zero_shot)
            return
        if lite_model is not None:
            from pipeline.models.lite import LiteModel

            self.model = LiteModel(lite_model, threads=1)
            self.predict_frames = self.model.predict
        else:
            self.model = keras_model if keras_model is not None else load_keras_model(bundle)
            self.predict_frames = functools.partial(self.model.predict, batch_size=64, verbose=0)
        if aggregator == "sequence":
            self.sequence = load_keras_model(bundle, SEQUENCE_FILE)
        if bundle.spec.kind == "musicnn" and from_audio:
            from pipeline.models.musicnn import build_musicnn, load_weights

            self.musicnn = build_musicnn()
            load_weights(self.musicnn, bundle.musicnn_variables())

    def scores(self, songs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(song scores [n_songs, n_classes], calibrated where the bundle was calibrated for
        this aggregator; winning class index [n_songs]) of each song's model input
        [n_frames, ...] (every song has at least one frame)."""
        found = self._uncalibrated(songs)
        calibrated = self.bundle.calibrate(np.stack([s for s, _ in found]), self.aggregator)
        return calibrated, np.array([best for _, best in found], np.int64)

    def probabilities(self, songs: list[np.ndarray]) -> list[np.ndarray]:
        """What the model gives for each song's input [n_frames, ...]: frame probabilities
        [n_frames, n_classes] (musicnn's taggram for zero-shot), or a song-level model's one
        row [1, n_classes] for the song's bag of frames."""
        if self.model is None:  # zero-shot: musicnn's taggram (computed here or precomputed)
            if self.musicnn is not None:
                songs = [self.musicnn.predict(x, batch_size=32, verbose=0)["taggram"]
                         for x in songs]
            return songs
        if self.musicnn is not None:  # the bundle's column of the network's outputs
            songs = [musicnn_column(self.musicnn.predict(x, batch_size=32, verbose=0),
                                    self.bundle.feature) for x in songs]
        songs = [self.bundle.normalize(x) for x in songs]
        if self.bundle.level == "song":  # bags: the model pools the frames of each song itself
            n = np.array([len(x) for x in songs])
            frames, mask, _ = make_bags(np.concatenate(songs), np.repeat(np.arange(len(songs)), n))
            return list(self.model.predict([frames, mask], batch_size=8, verbose=0)[:, None])
        frames = self.predict_frames(np.concatenate(songs))
        bounds = np.cumsum([0] + [len(x) for x in songs])
        return [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _uncalibrated(self, songs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """(song scores, winning class) of each song, as the model and aggregator give them."""
        probs = self.probabilities(songs)
        if self.model is not None and self.bundle.level == "song":  # a score per song already
            return [(p[0], int(np.argmax(p[0]))) for p in probs]
        return self._aggregate(probs)

    def _aggregate(self, probs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """Frame probabilities of each song [n_frames, n_classes] -> (song scores, winner)."""
        if self.aggregator == "sequence":
            from pipeline.models.sequence import sequence_scores

            return [(s, int(np.argmax(s))) for s in sequence_scores(self.sequence, probs)]
        out = []
        for p in probs:
            s = aggregate(p, self.aggregator)
            out.append((s, decide(s, p)))
        return out
