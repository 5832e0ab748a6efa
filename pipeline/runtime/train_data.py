"""Training data on Ray Data: committed feature parts (or a frame table) as per-split datasets.

The driver lists the committed part files and gets back aggregates only: the label set, the
rows and songs of each split, and the per-band statistics of the train rows. Frames stream
from the parts to the Train workers, and whole songs to the evaluation actors; each row's split
is decided where the row is (:mod:`pipeline.splits`), so no list of songs exists anywhere.

Map tasks read the committed Parquet parts, projected to the keys and the model's feature
(:func:`read_parts`); ``mil`` bags and the evaluation's songs are read from whole parts, since
a part holds every frame of its songs (:func:`read_split_songs`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.aggregate import AggregateFn, Unique
from ray.data.context import ShuffleStrategy
from ray.data.block import BlockAccessor
from ray.data.extensions import ArrowTensorArray

from pipeline.errors import CatalogError, ParameterError
from pipeline.features.bags import group_by_song, pool_bags, song_bag
from pipeline.features.stats import BandStats
from pipeline.models.cnn import feature_column, model_level
from pipeline.splits import (SPLIT_METHODS, SPLITS, VALID_FROM_TRAIN, SplitRule, fold_of,
                             resolve_method)
from pipeline.storage import fs as fsio
from pipeline.storage.shards import FeatureStore, tensor_array, tensor_rows, tensor_values

log = logging.getLogger(__name__)

KEYS = ["song_id", "label", "artist", "split", "frame"]
SPLIT_KEYS = ["song_id", "label", "artist", "split"]  # what decides a row's split
_SHUFFLE_BYTES = 256 * 1024**2  # a Train worker's local shuffle buffer holds about this much


@dataclasses.dataclass(frozen=True)
class Source:
    """Where training rows come from: committed parts of a feature directory (listed by its
    ``_songs`` table's index files), or a user's frame table (small, held in memory;
    ``table``)."""

    spec: object
    column: str  # the feature the model reads
    shape: tuple[int, ...]  # of one frame (or embedding, or table row)
    fingerprint: str  # of the spec and the committed rows, for resuming runs
    root: str | None = None
    index_files: tuple[str, ...] = ()  # the index's committed files, one per commit
    table: pa.Table | None = None
    cpus: int = 1  # CPUs the job may use: reads are cut into tasks for as many
    # the materialized part datasets made so far, by shuffle seed (None: unshuffled)
    _parts: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                     compare=False)

    def rows(self, columns: list[str], *, shuffle: bool = False, seed: int = 0, where=None):
        """A Ray Dataset of these rows, projected to ``columns``; ``shuffle``: the parts in a
        random order (by ``seed``), their blocks in a new order every epoch. ``where`` (see
        :func:`read_parts`) lets a read skip row groups without a chosen row; it does not
        filter rows."""
        import ray

        if self.table is not None:
            rows = ray.data.from_arrow(self.table.select(columns))
            return rows.randomize_block_order() if shuffle else rows
        return self.parts_dataset(shuffle=shuffle, seed=seed).map_batches(
            read_parts, batch_size=None, batch_format="pyarrow",
            fn_kwargs={"root": self.root, "columns": columns, "where": where})

    def parts_dataset(self, *, shuffle: bool = False, seed: int = 0):
        """A Ray Dataset of the committed part names (one small row each), in blocks of a few
        parts: a map over it reads one block's parts in one task (:func:`parts_per_block`).
        ``shuffle``: each index file's parts in a random order (by ``seed``) and the blocks
        in a new order every epoch."""
        parts = self._parts_blocks(seed if shuffle else None)
        return parts.randomize_block_order() if shuffle else parts

    def part_count(self) -> int:
        return self._parts_blocks(None).count()

    def _parts_blocks(self, seed: int | None):
        """The part names, listed in the cluster from the index files (no list of songs or
        parts in the driver), materialized in blocks: at most ``parts_per_block`` parts each
        while the index files are fewer than 8 read tasks per CPU (a small directory), else a
        block per index file (the driver then holds a block per commit, not per part)."""
        import ray

        if seed in self._parts:
            return self._parts[seed]
        if not self.index_files:
            raise CatalogError(f"{self.root} has no committed feature rows")
        files = ray.data.from_items([{"index": f} for f in self.index_files],
                                    override_num_blocks=len(self.index_files))
        parts = files.map_batches(index_parts, batch_size=1, batch_format="pyarrow",
                                  fn_kwargs={"seed": seed}).materialize()
        n = parts.count()
        if not n:
            raise CatalogError(f"{self.root} has no committed feature rows")
        blocks = min(-(-n // parts_per_block(n, self.cpus)),
                     max(len(self.index_files), 8 * self.cpus))
        if blocks != parts.num_blocks():
            parts = parts.repartition(blocks).materialize()
        self._parts[seed] = parts
        return parts


def index_parts(batch: pa.Table, *, seed: int | None) -> pa.Table:
    """Ray Data fn: one index file's URI -> the parts it commits (``part`` rows), sorted, or
    in a random order by ``seed`` and the file. A part is committed by one index file only."""
    import zlib

    uri = batch.column("index")[0].as_py()
    index = pq.read_table(pa.BufferReader(fsio.read_bytes(uri)), columns=["part"])
    parts = np.array(sorted(pc.unique(pc.drop_null(index.column("part"))).to_pylist()),
                     dtype=object)
    if seed is not None:
        np.random.default_rng([seed, zlib.crc32(uri.rsplit("/", 1)[-1].encode())]).shuffle(parts)
    return pa.table({"part": pa.array(parts.tolist(), pa.string())})


def parts_per_block(parts: int, cpus: int) -> int:
    """Parts one read task takes: up to 4, while every CPU still gets 8 tasks a pass.

    A task per part spent more on its scheduling than on its rows: a train pass over 160
    cnn2d parts (19k frames) kept the streaming executor's coordinator at 27 % of a core and
    the single reading CPU at ~37 ms a part for the validation split's ~25 frames.
    """
    return int(np.clip(parts // (8 * cpus), 1, 4))


def read_parts(batch: pa.Table, *, root: str, columns: list[str], where=None) -> pa.Table:
    """Ray Data map_batches fn: part names -> their rows, projected to ``columns``; with
    ``where`` (key columns -> a bool per row, e.g. :func:`in_splits`), only their row groups
    that hold a chosen row.

    Reading the parts in map tasks costs ~0.2 s a pass on 2 CPUs where ``read_parquet``'s
    listing and read operators cost ~2 s, and the train and validation datasets are read
    again every epoch.
    """
    store = FeatureStore(root)
    return pa.concat_tables([store.read_part(p, columns, where=where, where_columns=SPLIT_KEYS)
                             for p in batch.column("part").to_pylist()])


def open_source(features: str, config) -> Source:
    """The rows ``config.model`` trains on (no Ray): a feature directory's committed parts,
    or a frame table (``config.frame_table``) read into memory."""
    if config.frame_table:
        return _frame_table_source(features, config)
    if config.splits:
        raise ParameterError("--splits is for --frame-table; a feature directory carries the "
                             "manifest's split column already")
    store = FeatureStore(features)
    spec = store.read_spec()
    column = feature_column(config.model)
    if config.feature and config.feature != column:
        if config.model != "embed":
            raise ParameterError(f"--feature chooses the musicnn column of --model embed; "
                                 f"model {config.model} reads {column!r}")
        column = config.feature
    if column not in spec.columns():
        raise ParameterError(f"model {config.model} reads {column!r}, but {features} holds "
                             f"{sorted(spec.columns())}; extract the matching " +
                             ("--features musicnn --pools" if column == "pools" else "--features"))
    # The Delta log lists the index files (one per commit), not the parts: the parts are
    # listed from those files in the cluster, when the rows are first read
    files = tuple(store.index_files())
    if not files:
        raise CatalogError(f"{store.root} has no committed feature rows")
    # Index file names are unique to the run and commit that wrote them, and a committed file
    # never changes: the same names, the same parts, the same rows
    digest = hashlib.sha256(spec.fingerprint().encode())
    digest.update(json.dumps(sorted(f.rsplit("/", 1)[-1] for f in files)).encode())
    return Source(spec=spec, column=column, shape=tuple(spec.columns()[column]),
                  fingerprint=digest.hexdigest(), root=store.root, index_files=files)


def _frame_table_source(path: str, config) -> Source:
    from pipeline.storage.frame_table import read_frame_table

    table = read_frame_table(path, name_column=config.name_column,
                             song_pattern=config.song_pattern, label_column=config.label_column)
    songs = dict.fromkeys(table.song_ids)
    meta = {sid: (None, None) for sid in songs}
    if config.splits:
        meta = _join_splits(meta, config.splits)
    frame = np.zeros(len(table.song_ids), np.int32)  # frame index within its song
    seen: dict[str, int] = {}
    for i, sid in enumerate(table.song_ids):
        frame[i] = seen[sid] = seen.get(sid, -1) + 1
    rows = pa.table({"song_id": table.song_ids.tolist(), "label": table.labels.tolist(),
                     "artist": [meta[s][1] for s in table.song_ids],
                     "split": [meta[s][0] for s in table.song_ids], "frame": frame,
                     "features": tensor_array(table.x)})
    digest = hashlib.sha256(fsio.read_bytes(path)).hexdigest()
    return Source(spec=table.spec, column="features", shape=(table.x.shape[1],),
                  fingerprint=digest, table=rows)


def _join_splits(meta: dict, manifest: str) -> dict:
    """(split, artist) of each table song from a manifest, matched on the song name."""
    from pipeline.storage.catalog import load_catalog

    by_name = {}
    for song in load_catalog(manifest):
        by_name[song.song_id] = by_name[song.song_id.rsplit("/", 1)[-1]] = song
    missing = [sid for sid in meta if sid not in by_name]
    if len(missing) == len(meta):
        raise ParameterError(f"no song of the table is in {manifest} (e.g. {missing[0]!r})")
    if missing:
        log.warning("train: %d table songs are not in %s and are left out", len(missing), manifest)
    return {sid: (by_name[sid].split, by_name[sid].artist) if sid in by_name else (None, None)
            for sid in meta}


@dataclasses.dataclass(frozen=True)
class SplitCounts:
    """Per split: frames, songs, and the most frames of one song."""

    frames: int
    songs: int
    longest: int


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The plan of one fit: what the driver knows (aggregates) and the datasets it hands out."""

    source: Source
    level: str  # "frame" or "song" (bags, mil)
    rule: SplitRule  # how each row's split is decided (its method resolved)
    classes: tuple[str, ...]
    counts: dict[str, SplitCounts]
    stats: BandStats  # of the train frames
    bag_frames: int  # frames per bag (song-level models)
    train_labels: dict  # {label: [train frames, train songs]}

    @property
    def method(self) -> str:
        return self.rule.method

    @property
    def seed(self) -> int:
        return self.rule.seed

    @property
    def inputs(self) -> list[str]:
        """Dataset columns the model takes, in its input order."""
        return ["frames", "mask"] if self.level == "song" else ["x"]

    def examples(self, split: str) -> int:
        """Training examples of a split: frames, or songs for bags."""
        counts = self.counts[split]
        return counts.songs if self.level == "song" else counts.frames

    def class_weights(self) -> list[float]:
        """Balanced class weights, in class order: train examples / (classes x the class's
        examples), so every class weighs as much in the loss (1 for an absent class)."""
        i = 1 if self.level == "song" else 0
        n = [self.train_labels.get(c, [0, 0])[i] for c in self.classes]
        return [sum(n) / (len(n) * k) if k else 1.0 for k in n]

    def input_bytes(self, *splits: str) -> int:
        """Bytes of the model inputs of ``splits`` (float32)."""
        return self._row_bytes() * sum(self.examples(s) for s in splits)

    def _row_bytes(self) -> int:
        return 4 * int(np.prod(self.source.shape)) * (self.bag_frames if self.level == "song"
                                                      else 1)

    def dataset(self, *splits: str, shuffle: bool = False, cache: bool = False,
                folds: int = 0):
        """A Ray Dataset of the rows of ``splits``: the model inputs, ``y`` (class index),
        ``song_id`` and ``split``. ``shuffle``: parts in a new random order every epoch (and
        bags draw their frames anew). ``cache`` (frame rows only): read once into the object
        store, so later epochs iterate those blocks instead of reading the parts again.
        ``folds``: a ``fold`` column too, each row's cross-validation fold
        (:func:`pipeline.splits.fold_of`)."""
        select = {"splits": list(splits), "rule": self.rule, "classes": list(self.classes),
                  "column": self.source.column, "folds": folds}
        # Reads skip the row groups (songs) of other splits: the validation pass decodes
        # about its own share of the features, not every part again.
        where = functools.partial(in_splits, splits=list(splits), rule=self.rule)
        if self.level == "song":
            return self.source.parts_dataset(shuffle=shuffle, seed=self.seed).map_batches(
                part_bags, batch_size=None,
                fn_kwargs={**select, "root": self.source.root, "n": self.bag_frames,
                           "sample": shuffle, "where": where})
        rows = self.source.rows(KEYS + [self.source.column], shuffle=shuffle, seed=self.seed,
                                where=where).map_batches(split_frames, batch_size=None,
                                                         batch_format="pyarrow", fn_kwargs=select)
        if not cache:
            return rows
        rows = rows.materialize()
        return rows.randomize_block_order() if shuffle else rows

    def song_reads(self, *splits: str):
        """The songs of ``splits`` for models that take a whole song (training's evaluation,
        as scoring reads a feature directory): (a Ray Dataset, (fn, kwargs)) where ``fn(batch,
        **kwargs)`` turns one of its pyarrow batches into songs (:func:`split_songs`), in the
        actor that runs the model. The dataset holds part names (a song is whole within its
        part), or a frame table's rows cut between songs."""
        import ray

        select = {"splits": list(splits), "rule": self.rule, "classes": list(self.classes),
                  "column": self.source.column}
        if self.source.table is None:
            where = functools.partial(in_splits, splits=list(splits), rule=self.rule)
            return self.source.parts_dataset(), (read_split_songs, {
                **select, "root": self.source.root, "where": where})
        return (ray.data.from_arrow(song_chunks(self.source.table, self.source.cpus)),
                (split_songs, select))

    def shuffle_rows(self, batch: int) -> int:
        """Rows of a Train worker's local shuffle buffer: about 256 MiB, at least 4 batches."""
        return int(np.clip(_SHUFFLE_BYTES // self._row_bytes(), 4 * batch, 16384))


def song_chunks(table: pa.Table, n: int) -> list[pa.Table]:
    """A frame table (held by the driver) as up to ``4 n`` tables that each hold whole songs."""
    table = table.sort_by("song_id")
    ids = table.column("song_id").to_numpy(zero_copy_only=False)
    if not len(ids):
        return [table]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    cuts = np.unique(starts[np.linspace(0, len(starts), 4 * max(1, n), endpoint=False)
                            .astype(int)]).tolist()
    return [table.slice(a, b - a) for a, b in zip(cuts, cuts[1:] + [len(ids)])]


def plan_training_data(source: Source, config) -> TrainingData:
    """One pass over the rows in the cluster: classes, split sizes and train statistics.

    Every method the split may resolve to is tallied in that pass (``--split auto``: the
    manifest's split, that split with validation songs taken from its train songs, or by
    song), since which one applies is known only once every row has been seen. A manifest
    that names no ``valid`` song gets a ``--valid-fraction`` of its train songs as such.
    """
    candidates = {"auto": ("manifest", VALID_FROM_TRAIN, "song"),
                  "manifest": ("manifest", VALID_FROM_TRAIN)}.get(config.split, (config.split,))
    if config.split not in ("auto", *SPLIT_METHODS):
        resolve_method(config.split, any_given=False)  # refuses it by name
    rules = tuple(SplitRule(m, seed=config.seed, valid=config.valid_fraction) for m in candidates)
    rows = source.rows(KEYS + [source.column])
    # One small global aggregate: the task-based shuffle takes ~2 s on 2 CPUs, the default
    # hash shuffle's aggregator actors ~8 s. The context is shared with the datasets made
    # from the same parts later (the evaluation partitions by song: a hash shuffle).
    context, strategy = rows.context, rows.context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        facts = rows.aggregate(Unique("label", ignore_nulls=True),
                               plan_aggregate(source.column, rules, bands=source.shape[0]),
                               label_aggregate(rules))
    finally:
        context.shuffle_strategy = strategy
    classes = tuple(sorted(facts["unique(label)"]))
    if not classes:
        raise ParameterError(f"{source.root or 'the table'} has no labelled songs; extract with "
                             f"--labels-from-folders or a manifest 'label' column")
    tally = SplitTally.from_list(rules, facts["split_tally"])
    method = resolve_method(config.split, any_given=tally.given > 0)
    if method == "artist" and tally.no_artist:
        raise ParameterError(f"--split artist needs an artist for every song; "
                             f"{tally.no_artist} labelled frames have none")
    counts = tally.counts(candidates.index(method))
    if method == "manifest" and not counts["valid"].frames:
        method = VALID_FROM_TRAIN  # the manifest names train and test songs only
        counts = tally.counts(candidates.index(method))
    if not counts["train"].frames:
        raise ParameterError("the split leaves no train songs")
    if not counts["valid"].frames:
        raise ParameterError(_no_validation(method, config.valid_fraction,
                                            counts["train"].songs))
    i = candidates.index(method)
    longest = max(c.longest for c in counts.values())
    return TrainingData(source=source, level=model_level(config.model, config.head),
                        rule=rules[i], classes=classes, counts=counts, stats=tally.stats[i],
                        bag_frames=min(config.bag_frames, longest),
                        train_labels=json.loads(facts["train_labels"]).get(str(i), {}))


def _no_validation(method: str, fraction: float, train_songs: int) -> str:
    """Why a split has no validation songs (needed for early stopping), and what to do."""
    import math

    needed = math.ceil(3 / fraction)  # then a draw of none is unlikely (< 5 %)
    where = ("the manifest names no 'valid' song, and" if method == VALID_FROM_TRAIN else
             "by " + method + ",")
    return (f"the split leaves no validation songs (needed for early stopping): {where} "
            f"--valid-fraction {fraction:g} of {train_songs} train songs drew none; "
            f"about {needed} are needed, or raise --valid-fraction")


@dataclasses.dataclass(frozen=True)
class SplitTally:
    """What a pass over training rows tells the plan, per candidate split rule: frames,
    songs and longest song of each split (``rows`` [rules, 3 splits, 3]) and the per-band
    statistics of the train frames; plus the labelled frames with a manifest split
    (``given``) and without an artist. Parts combine in any order (pure numpy)."""

    rules: tuple[SplitRule, ...]
    given: int
    no_artist: int
    rows: np.ndarray
    stats: tuple[BandStats, ...]

    @classmethod
    def of(cls, batch: dict, *, rules, column: str) -> "SplitTally":
        labelled = np.array([label is not None for label in batch["label"]], bool)
        x, frame = np.asarray(batch[column]), np.asarray(batch["frame"])
        rows, stats = np.zeros((len(rules), len(SPLITS), 3), np.int64), []
        for i, rule in enumerate(rules):
            _, splits = _in_splits(batch, rule)
            for j, split in enumerate(SPLITS):
                chosen = splits == split
                if chosen.any():
                    rows[i, j] = chosen.sum(), (chosen & (frame == 0)).sum(), frame[chosen].max() + 1
            stats.append(BandStats.of(x[splits == "train"]))
        return cls(tuple(rules), int(sum(bool(s) for s in batch["split"][labelled])),
                   int(sum(not a for a in batch["artist"][labelled])), rows, tuple(stats))

    def combine(self, other: "SplitTally") -> "SplitTally":
        rows = self.rows + other.rows
        rows[..., 2] = np.maximum(self.rows[..., 2], other.rows[..., 2])  # longest, not a sum
        return SplitTally(self.rules, self.given + other.given,
                          self.no_artist + other.no_artist, rows,
                          tuple(a.combine(b) for a, b in zip(self.stats, other.stats)))

    def to_list(self) -> list[float]:
        """A flat list of floats: an accumulator Ray Data keeps in an Arrow column."""
        return [float(self.given), float(self.no_artist), *self.rows.ravel().tolist(),
                *(v for s in self.stats for v in s.to_list())]

    @classmethod
    def from_list(cls, rules, value: list[float]) -> "SplitTally":
        rules, value = tuple(rules), np.asarray(value, np.float64)
        head = 2 + len(rules) * len(SPLITS) * 3
        rows = value[2:head].astype(np.int64).reshape(len(rules), len(SPLITS), 3)
        stats = [BandStats.from_list(v) for v in np.split(value[head:], len(rules))]
        return cls(rules, int(value[0]), int(value[1]), rows, tuple(stats))

    @classmethod
    def empty(cls, rules, bands: int) -> "SplitTally":
        zero = BandStats(0, np.zeros(bands), np.zeros(bands))
        return cls(tuple(rules), 0, 0, np.zeros((len(rules), len(SPLITS), 3), np.int64),
                   (zero,) * len(rules))

    def counts(self, i: int) -> dict[str, "SplitCounts"]:
        """Frames, songs and longest song of each split under the ``i``-th rule."""
        return {split: SplitCounts(*map(int, self.rows[i, j])) for j, split in enumerate(SPLITS)}


def plan_aggregate(column: str, rules, *, bands: int) -> AggregateFn:
    """A Ray Data aggregate: the :class:`SplitTally` of the rows, combined in the cluster.

    A generic ``AggregateFn`` on purpose: it reads several columns, and Ray Data prunes a
    block to the one column an ``AggregateFnV2`` declares.
    """
    zero = SplitTally.empty(rules, bands).to_list()

    def combine(current: list[float], new: list[float]) -> list[float]:
        return SplitTally.from_list(rules, current).combine(
            SplitTally.from_list(rules, new)).to_list()

    def accumulate_block(current: list[float], block) -> list[float]:
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        return combine(current, SplitTally.of(batch, rules=rules, column=column).to_list())

    return AggregateFn(init=lambda _: list(zero), merge=combine,
                       accumulate_block=accumulate_block, name="split_tally")


def split_frames(batch: pa.Table, *, splits: list[str], rule: SplitRule, classes: list[str],
                 column: str, folds: int = 0):
    """Ray Data map_batches fn (pyarrow): the rows of ``splits`` as model input ``x``, ``y``,
    ``song_id``, ``frame`` and ``split`` (and ``fold`` where ``folds``). A batch without such a row yields nothing: Ray Data stores an
    empty tensor column as pickled objects, with a warning in every task.

    Arrow in, Arrow out, fused with :func:`read_parts`: the frames are copied once, into
    ``x`` (as numpy batches they were copied three times: Ray's join of the part's row
    groups, the selection, and Ray's conversion back to Arrow; together more than the
    Parquet decoding). ``x`` is Ray's own tensor type (zero-copy from numpy), whose shape
    ``to_tf`` can read; it cannot read Arrow's canonical one.
    """
    keys = {k: batch.column(k).to_numpy(zero_copy_only=False) for k in SPLIT_KEYS}
    keep, split = _in_splits(keys, rule)
    keep &= np.isin(split, splits)
    if not keep.any():
        return
    index = {c: i for i, c in enumerate(classes)}
    out = {"song_id": batch.column("song_id").filter(pa.array(keep)),
           "frame": batch.column("frame").filter(pa.array(keep)),
           "split": pa.array(split[keep], pa.string()),
           "x": ArrowTensorArray.from_numpy(tensor_rows(batch.column(column), keep, np.float32)),
           "y": np.array([index[label] for label in keys["label"][keep]], np.int64)}
    if folds:
        out["fold"] = fold_of(keys["song_id"][keep], keys["artist"][keep], folds, seed=rule.seed)
    yield pa.table(out)


def label_aggregate(rules) -> AggregateFn:
    """A Ray Data aggregate: the train frames and songs of each label under each rule, as
    JSON ``{rule index: {label: [frames, songs]}}`` (labels are known only once it is done)."""

    def merge(current: str, new: str) -> str:
        total = json.loads(current)
        for i, labels in json.loads(new).items():
            for label, counts in labels.items():
                have = total.setdefault(i, {}).setdefault(label, [0, 0])
                total[i][label] = [a + b for a, b in zip(have, counts)]
        return json.dumps(total)

    def accumulate_block(current: str, block) -> str:
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        labels, first = np.asarray(batch["label"], dtype=object), np.asarray(batch["frame"]) == 0
        part = {}
        for i, rule in enumerate(rules):
            keep, splits = _in_splits(batch, rule)
            train = keep & (splits == "train")
            part[str(i)] = {label: [int((train & (labels == label)).sum()),
                                    int((train & first & (labels == label)).sum())]
                            for label in set(labels[train])}
        return merge(current, json.dumps(part))

    return AggregateFn(init=lambda _: "{}", merge=merge, accumulate_block=accumulate_block,
                       name="train_labels")


def song_stats(data: TrainingData) -> BandStats:
    """The statistics of the train songs' pooled vectors (mean and std over each song's
    bag of normalised frames, [2 bands]), aggregated in one pass over the train bags."""
    def pooled(batch: dict, *, mean: np.ndarray, scale: np.ndarray) -> dict:
        frames = (batch["frames"] - mean) / scale
        return {"pooled": pool_bags(frames, batch["mask"])}

    songs = dataclasses.replace(data, level="song").dataset("train").map_batches(
        pooled, batch_format="numpy", fn_kwargs={"mean": data.stats.mean,
                                                 "scale": data.stats.scale()})
    bands = 2 * data.source.shape[0]
    return BandStats.from_list(songs.aggregate(stats_aggregate("pooled", bands))["pooled"])


def stats_aggregate(column: str, bands: int) -> AggregateFn:
    """A Ray Data aggregate: the :class:`BandStats` of a column of vectors [bands]."""
    def merge(current: list[float], new: list[float]) -> list[float]:
        return BandStats.from_list(current).combine(BandStats.from_list(new)).to_list()

    def accumulate_block(current: list[float], block) -> list[float]:
        values = BlockAccessor.for_block(block).to_batch_format("numpy")[column]
        return merge(current, BandStats.of(np.asarray(values)).to_list())

    zero = BandStats(0, np.zeros(bands), np.zeros(bands)).to_list()
    return AggregateFn(init=lambda _: list(zero), merge=merge,
                       accumulate_block=accumulate_block, name=column)


def part_bags(batch: dict, *, root: str, splits: list[str], rule: SplitRule,
              classes: list[str], column: str, n: int, sample: bool, where=None, folds: int = 0):
    """Ray Data map_batches fn: committed parts -> one bag per song of ``splits``
    (``frames`` [n, ...], ``mask`` [n], ``y``, ``song_id``, ``split``, and ``fold`` where
    ``folds``); ``sample`` draws long songs' frames anew. Parts without such a song yield
    nothing (Ray Data cannot hold an empty 4-D tensor column)."""
    songs = read_split_songs(pa.table({"part": list(batch["part"])}), root=root, splits=splits,
                             rule=rule, classes=classes, column=column, where=where)
    if not len(songs["y"]):
        return
    rng = np.random.default_rng() if sample else None
    frames, mask = zip(*(song_bag(x, n, rng) for x in songs["x"]))
    bags = {"song_id": songs["song_id"], "split": songs["split"], "frames": np.stack(frames),
            "mask": np.stack(mask), "y": songs["y"]}
    if folds:
        bags["fold"] = fold_of(songs["song_id"], songs["artist"], folds, seed=rule.seed)
    yield bags


def read_split_songs(batch: pa.Table, *, root: str, where=None, **select) -> dict:
    """Committed parts (``part`` rows) -> their songs of the chosen splits, as
    :func:`split_songs` gives them; a part is read once, only its row groups that hold such a
    song (``where``: :func:`in_splits`)."""
    store = FeatureStore(root)
    column = select["column"]
    parts = [store.read_part(p, KEYS + [column], where=where, where_columns=SPLIT_KEYS)
             for p in batch.column("part").to_pylist()]
    return split_songs(pa.concat_tables(parts), **select)


def split_songs(rows: pa.Table, *, splits: list[str], rule: SplitRule, classes: list[str],
                column: str) -> dict:
    """Frame rows of whole songs (:data:`KEYS` and ``column``, any order) -> one entry per
    song of ``splits``, in first-seen order: ``song_id``, ``split``, ``artist`` (object
    arrays), ``y`` (class index, int64) and ``x`` (an object array of each song's frames in
    frame order, float32 [n_frames, ...])."""
    keys = {k: rows.column(k).to_numpy(zero_copy_only=False) for k in KEYS}
    keep, split = _in_splits(keys, rule)
    keep &= np.isin(split, splits)
    chosen = np.flatnonzero(keep)
    groups = list(group_by_song(keys["song_id"][chosen]).values())
    firsts = [chosen[g[0]] for g in groups]
    values = tensor_values(rows.column(column)) if groups else None
    xs = np.empty(len(groups), dtype=object)
    for i, g in enumerate(groups):
        found = chosen[g]
        xs[i] = values[found[np.argsort(keys["frame"][found])]].astype(np.float32)
    index = {c: i for i, c in enumerate(classes)}
    return {"song_id": np.array(keys["song_id"][firsts], dtype=object),
            "split": np.array(split[firsts], dtype=object),
            "artist": np.array(keys["artist"][firsts], dtype=object),
            "y": np.array([index[label] for label in keys["label"][firsts]], np.int64), "x": xs}


def in_splits(keys: pa.Table, *, splits: list[str], rule: SplitRule) -> np.ndarray:
    """Whether each row of ``keys`` (a table of :data:`SPLIT_KEYS`) is in one of ``splits``."""
    keep, split = _in_splits({k: keys.column(k).to_numpy(zero_copy_only=False)
                              for k in SPLIT_KEYS}, rule)
    return keep & np.isin(split, splits)


def _in_splits(batch: dict, rule: SplitRule) -> tuple[np.ndarray, np.ndarray]:
    """(in a split, split of each row): unlabelled rows, and rows without an artist under
    ``artist`` (which the plan refuses), are in none."""
    usable = np.array([label is not None for label in batch["label"]], bool)
    if rule.method == "artist":
        usable &= np.array([bool(a) for a in batch["artist"]], bool)
    splits = np.full(len(usable), None, dtype=object)
    if usable.any():
        splits[usable] = rule.of(*(np.asarray(batch[k], dtype=object)[usable]
                                   for k in ("song_id", "artist", "split")))
    return usable & np.isin(splits, SPLITS), splits
