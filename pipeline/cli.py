"""The `genres` command: parse, call one library function, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pipeline.errors import GenresError, ParameterError
from pipeline.runtime.session import VERBOSE_ENV, quiet_libraries

log = logging.getLogger("genres")


def _number(kind: type, *, minimum: float, inclusive: bool, most: float | None = None):
    """argparse type: a number of ``kind`` above ``minimum`` (or equal, if ``inclusive``),
    and at most ``most`` when given."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum}, "
                                             f"got {text}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be <= {most}, got {text}")
        return value

    return parse


_positive_float = _number(float, minimum=0, inclusive=False)
_nonneg_float = _number(float, minimum=0, inclusive=True)
_positive_int = _number(int, minimum=0, inclusive=False)
_nonneg_int = _number(int, minimum=0, inclusive=True)
_fraction = _number(float, minimum=0, inclusive=False, most=0.5)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genres", description="Tag music catalogs with genres on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray's and TensorFlow's own logs and progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _extract_parser(sub)
    _train_parser(sub)
    _score_parser(sub, "score", "label every song of a catalog")
    _score_parser(sub, "tag", "label only songs not yet labelled by this model (schedules)")
    _latest_parser(sub)
    _report_parser(sub)
    _other_parsers(sub)
    return parser


# Options several subcommands share


def _ray_address(p):
    """--address."""
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")


def _allow_http(p):
    """--allow-http."""
    p.add_argument("--allow-http", action="store_true",
                   help="let the catalog name http(s):// songs (off by default: a manifest "
                        "would make workers fetch any URL)")


def _retry_errors(p):
    """--retry-errors, --retry-after, --max-attempts."""
    p.add_argument("--retry-errors", action="store_true",
                   help="try again now every song whose last try failed, gone ones too "
                        "(by default only transient failures are, on a schedule)")
    p.add_argument("--retry-after", type=_nonneg_float, default=20.0, metavar="HOURS",
                   help="a song whose try failed for a reason that may pass (missing, io, "
                        "timeout) is tried again this long after its first failure, then "
                        "twice as long after each next one (default 20: every night at "
                        "first, then every other night, ...)")
    p.add_argument("--max-attempts", type=_positive_int, default=6,
                   help="tries of such a song in all; the last failure is recorded as "
                        "kind gone, final (default 6)")


def _cluster_bounds(p, *, gpus: str):
    """--max-cpus, --max-gpus, --wait-for-nodes."""
    p.add_argument("--max-cpus", type=_positive_int, default=None,
                   help="most CPUs the job's work may use (default: what the cluster's "
                        "autoscaler may bring up, else what is up); its actors start at "
                        "what the work needs, and the autoscaler launches their nodes")
    p.add_argument("--max-gpus", type=_nonneg_int, default=None,
                   help=f"most GPUs {gpus} (default: as --max-cpus)")
    p.add_argument("--wait-for-nodes", type=_positive_float, default=900.0,
                   metavar="SECONDS",
                   help="how long to wait for the nodes a stage cannot start without "
                        "(GPUs, Train's workers) before giving up (default 900)")


def _songs_per_window(p):
    """--songs-per-window."""
    p.add_argument("--songs-per-window", type=_positive_int, default=None,
                   help="songs a run takes at a time, each window committed as it ends, so "
                        "the driver's memory does not grow with the catalog (default: "
                        "200k, or 16 tasks per CPU the job may use)")


def _commit_every(p):
    """--commit-every."""
    p.add_argument("--commit-every", type=_nonneg_float,
                   default=60.0, metavar="SECONDS",
                   help="commit finished work at least this often (default 60): a killed "
                        "run loses at most this much, and its re-run skips the rest")


# One function per subcommand


def _extract_parser(sub) -> None:
    """genres extract."""
    p = sub.add_parser("extract", help="decode audio into frame features (Parquet shards)")
    p.add_argument("catalog", help="audio file, folder, manifest (.csv/.parquet) or URI")
    p.add_argument("--out", required=True, help="feature directory (local or URI)")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="first folder level under the catalog root is the label")
    p.add_argument("--features", default="frames",
                   choices=["frames", "musicnn", "musicnn:MSD", "musicnn:MTT"],
                   help="frames: MFCC + log-mel per frame; musicnn[:MSD|MTT]: pretrained "
                        "embeddings per 3 s patch (default MSD)")
    p.add_argument("--pools", action="store_true",
                   help="musicnn: also keep the mid-end's mean and max pools (1,506 values a "
                        "patch, ~7x the storage) for transfer learning (train --feature pools)")
    p.add_argument("--frame-seconds", type=_positive_float, default=5.0)
    p.add_argument("--hop-seconds", type=_positive_float, default=None,
                   help="seconds between frame starts (default: frame length, no overlap)")
    p.add_argument("--offset-seconds", type=_nonneg_float, default=0.0)
    p.add_argument("--max-seconds", type=_positive_float, default=None)
    p.add_argument("--sample-rate", type=_positive_int, default=22050, help="Hz")
    p.add_argument("--n-mfcc", type=_positive_int, default=20)
    p.add_argument("--n-mels", type=_positive_int, default=128)
    p.add_argument("--n-fft", type=_positive_int, default=2048)
    p.add_argument("--hop-length", type=_positive_int, default=512, help="STFT hop, samples")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="feature storage type")
    p.add_argument("--songs-per-task", type=_positive_int, default=None,
                   help="songs per Ray task and shard (default: ~4 tasks per CPU, at most 32)")
    p.add_argument("--use-gpu", action="store_true",
                   help="musicnn features: each extract actor takes a GPU (TensorFlow runs "
                        "there; the autoscaler brings GPU nodes)")
    _cluster_bounds(p, gpus="extract --use-gpu may use (an actor per GPU)")
    _songs_per_window(p)
    _commit_every(p)
    p.add_argument("--overwrite", action="store_true",
                   help="delete OUT and start fresh (only a feature directory: a folder "
                        "without its spec.json is left alone)")
    _retry_errors(p)
    _allow_http(p)
    _ray_address(p)


def _train_parser(sub) -> None:
    """genres train."""
    p = sub.add_parser("train", help="fit a model on Ray Train and write a model bundle")
    p.add_argument("features", help="feature directory written by `genres extract` (or, with "
                                    "--frame-table, a CSV/Parquet table of frame features)")
    p.add_argument("--out", required=True, help="model bundle directory")
    p.add_argument("--model", default="cnn2d",
                   help="cnn2d (default), cnn1d, cnn1d_mel100ms, dnn, mil, or embed (musicnn "
                        "features)")
    _train_data_options(p)
    _train_model_options(p)
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="frames (songs for mil) per optimizer step, over all workers")
    p.add_argument("--patience", type=_positive_int, default=6,
                   help="early stopping: epochs without validation-loss improvement")
    p.add_argument("--num-workers", type=_positive_int, default=1)
    p.add_argument("--use-gpu", action="store_true",
                   help="one GPU per Train worker (the autoscaler brings GPU nodes)")
    _cluster_bounds(p, gpus="the cluster may give (--use-gpu needs --num-workers of them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bag-frames", type=_positive_int, default=16,
                   help="mil: at most this many frames per song in a bag (drawn anew each epoch)")
    p.add_argument("--storage-path", default=None,
                   help="Ray Train checkpoint storage (shared storage on multi-node clusters; "
                        "default ~/ray_results)")
    p.add_argument("--run-name", default=None,
                   help="Ray Train run name (default: derived from --out, the settings and the "
                        "data, so a re-run resumes from its last epoch checkpoint)")
    _ray_address(p)


def _train_data_options(p) -> None:
    """Train: where the labelled songs come from and how they are split."""
    p.add_argument("--frame-table", action="store_true",
                   help="FEATURES is a table with one row per frame: name, label, features...")
    p.add_argument("--name-column", default="filename", help="frame table: frame name column")
    p.add_argument("--label-column", default="label", help="frame table: label column")
    p.add_argument("--song-pattern", default=r"^(.+)\.\d+\.\w+$",
                   help="frame table: regex whose 'song' (or first) group is the song in a frame "
                        "name (default: 'jazz.00012.4.wav' -> 'jazz.00012')")
    p.add_argument("--splits", default=None,
                   help="frame table: manifest whose split/artist columns are joined on the song")
    p.add_argument("--split", default="auto", choices=["auto", "manifest", "song", "artist"],
                   help="auto: the manifest's split column when present, else by song")
    p.add_argument("--valid-fraction", type=_fraction, default=0.15,
                   help="share of the songs held out for validation (early stopping): by song "
                        "or artist, or, when the manifest names no 'valid' song, of its train "
                        "songs (by artist where the manifest has one); recorded in the bundle")


def _train_model_options(p) -> None:
    """Train: the embed model's head, its choice, its feature, the class weights."""
    p.add_argument("--head", default=None, choices=["auto", "logistic", "pooled", "dense"],
                   help="embed: pooled (a linear model of each song's patch mean and std), "
                        "logistic (a linear model of each patch), dense (a hidden layer), or "
                        "auto (default): fit each and keep the simplest within one standard "
                        "error of the best song log-loss, by cross-validation where the train "
                        "and validation songs are few (see --cv-folds), else on the validation "
                        "songs")
    p.add_argument("--cv-folds", type=_nonneg_int, default=None,
                   help="--head auto: folds of the cross-validation that chooses the head, "
                        "held out by artist (else by song); default 5 for up to 1,000 train "
                        "and validation songs, 0 above; 0 chooses on the validation songs")
    p.add_argument("--feature", default=None, choices=["embedding", "pools", "taggram"],
                   help="embed: the musicnn column to train on (default embedding; pools "
                        "needs features extracted with --pools)")
    p.add_argument("--class-weights", default="balanced", choices=["balanced", "none"],
                   help="balanced (default): each class weighs the same in the loss, however "
                        "many train songs it has")


def _score_parser(sub, name: str, text: str) -> None:
    """genres score and genres tag (``name``)."""
    p = sub.add_parser(name, help=text)
    p.add_argument("catalog", help="audio file, folder, manifest or URI; or a feature "
                                   "directory from `genres extract` (same spec as the model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model bundle directory")
    source.add_argument("--tags", choices=["MSD", "MTT"],
                        help="zero-shot: musicnn's own tags (Million Song Dataset or "
                             "MagnaTagATune), no trained model")
    p.add_argument("--out", required=True, help="labels directory")
    p.add_argument("--aggregate", default=None,
                   choices=["mean", "majority", "logodds", "sequence"],
                   help="song aggregation of frame predictions (default: mean; mil bundles "
                        "pool frames themselves)")
    p.add_argument("--top-k", type=_positive_int, default=3,
                   help="classes/tags listed in top_tags")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="songs per model call")
    p.add_argument("--use-gpu", action="store_true",
                   help="one GPU per model actor (up to --max-gpus; the autoscaler brings "
                        "GPU nodes)")
    _cluster_bounds(p, gpus="score --use-gpu may use (a model actor per GPU)")
    _songs_per_window(p)
    _commit_every(p)
    _retry_errors(p)
    _allow_http(p)
    _ray_address(p)


def _latest_parser(sub) -> None:
    """genres latest."""
    p = sub.add_parser("latest", help="the latest label of every song in a labels table")
    p.add_argument("labels", help="labels table written by `genres score`/`genres tag`")
    p.add_argument("--model-id", default=None, help="only labels of this model_id")
    p.add_argument("--as-of", default=None,
                   help="the table as it was at this version (a number) or time (ISO 8601, "
                        "e.g. 2026-12-01T06:00:00Z)")
    p.add_argument("--out", default=None,
                   help="a .parquet or .csv file, or a folder (or URI) that Ray Data fills "
                        "with Parquet files (default: CSV on stdout)")
    _ray_address(p)


def _report_parser(sub) -> None:
    """genres report."""
    p = sub.add_parser("report", help="a catalog report of a labels table: one self-contained "
                                      "HTML page, review lists as CSV, figures as JSON")
    p.add_argument("labels", help="labels table written by `genres score`/`genres tag`")
    p.add_argument("--out", required=True, help="the HTML page (review lists go next to it)")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    p.add_argument("--model-id", default=None, help="only this model_id (default: every one)")
    p.add_argument("--since", default=None,
                   help="also what changed since this table version (a number) or time (ISO "
                        "8601, e.g. 2026-12-01T06:00:00Z)")
    p.add_argument("--model", default=None,
                   help="a model bundle whose test metrics and confusion matrix to show")
    p.add_argument("--top-n", type=int, default=20, help="songs per review list")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="confidence below which a song counts as unsure")
    _ray_address(p)


def _other_parsers(sub) -> None:
    """migrate, weights, demo."""
    p = sub.add_parser("migrate", help="convert a feature directory or labels of genres 0.1 "
                                       "(parts with _commits/ records) to this version's "
                                       "tables, or record an older model bundle's file hashes")
    p.add_argument("directory", help="feature directory, labels directory or model bundle "
                                     "(local or URI)")

    sub.add_parser("weights", help="fetch the pretrained musicnn weights into the cache "
                                   "($GENRES_CACHE or ~/.cache/genres)")

    p = sub.add_parser("demo", help="the whole flow on synthesised songs, embedded local Ray")
    p.add_argument("--workdir", default="genres-demo", help="where the demo writes (default: ./genres-demo)")
    p.add_argument("--songs-per-genre", type=_positive_int, default=12)
    p.add_argument("--epochs", type=_positive_int, default=12)
    p.add_argument("--num-workers", type=_positive_int, default=2)


def _spec_from(args):
    from pipeline.features import FeatureSpec

    if args.features.startswith("musicnn"):
        from pipeline.features.spec import EmbeddingSpec
        from pipeline.storage.weights import fetch_wheel, weights_hash

        fetch_wheel()  # before any Ray work: a missing download fails here, once
        model = args.features.split(":")[1] if ":" in args.features else "MSD"
        return EmbeddingSpec(model=model, weights=weights_hash(),
                             offset_seconds=args.offset_seconds, max_seconds=args.max_seconds,
                             dtype=args.dtype, pools=args.pools)
    if args.pools:
        raise ParameterError("--pools is for --features musicnn")
    return FeatureSpec(sample_rate=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop_length,
                       n_mels=args.n_mels, n_mfcc=args.n_mfcc, frame_seconds=args.frame_seconds,
                       hop_seconds=args.hop_seconds, offset_seconds=args.offset_seconds,
                       max_seconds=args.max_seconds, dtype=args.dtype)


def _retries(args):
    from pipeline.retry import RetryPolicy

    return RetryPolicy(after_hours=args.retry_after, attempts=args.max_attempts)


def _bounds(args):
    from pipeline.runtime.cluster import Bounds

    return Bounds(max_cpus=args.max_cpus, max_gpus=args.max_gpus, wait_s=args.wait_for_nodes)


def _run_options(args):
    """How a catalog run (extract, score, tag) runs, from its options."""
    from pipeline.runtime.cluster import RunOptions

    return RunOptions(address=args.address, bounds=_bounds(args),
                      songs_per_window=args.songs_per_window, commit_every_s=args.commit_every,
                      retry_errors=args.retry_errors, retries=_retries(args))


def cmd_extract(args) -> dict:
    from pipeline.runtime.extract import ExtractConfig, run_extract

    config = ExtractConfig(labels_from_folders=args.labels_from_folders,
                           overwrite=args.overwrite, songs_per_task=args.songs_per_task,
                           use_gpu=args.use_gpu)
    s = run_extract(args.catalog, args.out, _spec_from(args), config, _run_options(args))
    failed = sum(s["errors"].values())
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())) or "none"
    rtf = s["audio_seconds"] / s["seconds"] if s["seconds"] else 0.0
    print(f"extract: {s['songs']} songs in, {s['skipped']} already done, "
          f"{_tried_again(s)}{s['ok']} ok, "
          f"{failed} failed ({kinds}), {s['frames']} frames, "
          f"{s['audio_seconds'] / 3600:.2f} h audio, {s['seconds']:.1f} s, {rtf:.0f}x realtime "
          f"-> {s['out']} (cluster: {s['limits']})")
    return s


def cmd_train(args) -> dict:
    from pipeline.runtime.train import TrainConfig, run_train

    config = TrainConfig(model=args.model, split=args.split, epochs=args.epochs,
                         batch_size=args.batch_size, patience=args.patience,
                         num_workers=args.num_workers, use_gpu=args.use_gpu, seed=args.seed,
                         bag_frames=args.bag_frames,
                         frame_table=args.frame_table, name_column=args.name_column,
                         song_pattern=args.song_pattern, label_column=args.label_column,
                         splits=args.splits, valid_fraction=args.valid_fraction,
                         head=args.head, cv_folds=args.cv_folds,
                         class_weights=args.class_weights, feature=args.feature)
    s = run_train(args.features, args.out, config, address=args.address,
                  storage_path=args.storage_path, run_name=args.run_name, bounds=_bounds(args))
    test = s["metrics"].get("test")
    if test:
        songs = ", ".join(f"{k} {v:.3f}" for k, v in test["song_accuracy"].items())
        frames = (f"frame accuracy {test['frame_accuracy']:.3f}, "
                  if test["frame_accuracy"] is not None else "")
        quality = f"test: {test['songs']} songs, {frames}song accuracy {songs}"
    else:
        quality = "no test songs in this split"
    heads = s["metrics"].get("heads") or {}
    if len(heads) > 1:  # the embed model's head, chosen by cross-validation or on validation
        by = s["metrics"]["selection"]["by"]
        key = "cv_song_log_loss" if s["metrics"]["selection"]["folds"] else "valid_song_log_loss"
        losses = ", ".join(f"{h} {v[key]:.3f}" for h, v in heads.items())
        quality += f"; head {s['head']} (song log-loss by {by}: {losses})"
        margin = (s["metrics"].get("baseline") or {}).get("test")
        if margin:
            quality += f", {margin['margin']:+.3f} over the logistic baseline on test"
    elif s.get("head"):
        quality += f"; head {s['head']}"
    calibration = s["metrics"].get("calibration") or {}
    if calibration.get("test"):  # what the confidences in the labels will mean
        test = calibration["test"]
        if calibration.get("fitted_on") in ("valid", "cv"):
            on = "validation songs" if calibration["fitted_on"] == "valid" else "out-of-fold songs"
            quality += (f"; confidence calibrated (T = {calibration['temperature']:.2f} on "
                        f"{calibration['songs']} {on}): test ECE "
                        f"{test['ece_before']:.3f} -> {test['ece_after']:.3f}")
        else:
            quality += (f"; confidence not calibrated ({calibration['songs']} songs, fewer "
                        f"than 30): test ECE {test['ece_before']:.3f}")
    print(f"train: {s['model']} on {s['train_songs']} train / {s['valid_songs']} valid songs, "
          f"{s['epochs']} epochs, {s['seconds']:.1f} s; {quality} -> {s['out']} "
          f"(model_id {s['model_id']}; cluster: {s['limits']})")
    return s


def cmd_score(args, *, tag: bool = False) -> dict:
    from pipeline.runtime.score import ScoreConfig, run_score

    config = ScoreConfig(model=args.model, zero_shot=args.tags, aggregate=args.aggregate,
                         top_k=args.top_k, batch_size=args.batch_size, use_gpu=args.use_gpu)
    s = run_score(args.catalog, args.out, config, _run_options(args))
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())) or "none"
    print(f"{'tag' if tag else 'score'}: {s['songs']} songs in, {s['skipped']} already labelled, "
          f"{_tried_again(s)}{s['labelled']} labelled, {s['failed']} failed ({kinds}), "
          f"{s['frames']} frames, "
          f"{s['seconds']:.1f} s -> {s['out']} (cluster: {s['limits']})")
    return s


def _tried_again(summary: dict) -> str:
    return f"{summary['retried']} tried again, " if summary.get("retried") else ""


def cmd_report(args) -> dict:
    from pipeline.report import write_report
    from pipeline.runtime.report import report_summary
    from pipeline.runtime.session import init_ray
    from pipeline.storage import fs as fsio
    from pipeline.storage.labels import LabelTable

    if args.top_n < 1 or not 0 <= args.threshold <= 1:
        raise ParameterError("--top-n must be at least 1 and --threshold within 0..1")
    since = int(args.since) if args.since and args.since.isdigit() else args.since
    LabelTable(args.labels).check_exists()
    init_ray(args.address)
    figures = report_summary(args.labels, model_id=args.model_id, since=since, top_n=args.top_n,
                             threshold=args.threshold, bundle=args.model)
    written = write_report(figures, args.out)
    if args.json:
        fsio.write_bytes_atomic(args.json, json.dumps(figures, indent=1, default=str).encode())
        written["json"] = args.json
    print(f"report: {len(figures['models'])} model(s) -> {', '.join(written.values())}")
    return written


def cmd_latest(args) -> dict:
    from pipeline.runtime.labels import latest_labels
    from pipeline.runtime.session import init_ray
    from pipeline.storage.labels import LabelTable

    as_of = int(args.as_of) if args.as_of and args.as_of.isdigit() else args.as_of
    LabelTable(args.labels).check_exists()
    init_ray(args.address)
    rows = latest_labels(args.labels, model_id=args.model_id, as_of=as_of)
    if args.out and not args.out.endswith((".csv", ".parquet")):
        n = 0
        if rows is not None:
            rows.write_parquet(args.out)
            n = rows.count()
        print(f"latest: {n} songs -> {args.out}")
        return {"songs": n}
    n = _stream_rows(rows, args.out)
    if args.out:
        print(f"latest: {n} songs -> {args.out}")
    return {"songs": n}


def _stream_rows(rows, out: str | None) -> int:
    """Write a dataset's rows batch by batch into one CSV (stdout when ``out`` is None) or
    Parquet file; the number of rows. ``probabilities`` becomes JSON in CSV."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from pipeline.storage.labels import LABEL_SCHEMA

    parquet = out is not None and out.endswith(".parquet")
    sink = open(out, "wb") if out else sys.stdout.buffer
    writer, n = None, 0
    batches = rows.iter_batches(batch_size=65536, batch_format="pyarrow") if rows else []
    try:
        for batch in batches or [LABEL_SCHEMA.empty_table()]:
            if not parquet:
                batch = _csv_ready(batch)
            if writer is None:
                writer = (pq.ParquetWriter(sink, batch.schema) if parquet
                          else pcsv.CSVWriter(sink, batch.schema))
            writer.write_table(batch)
            n += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
        if out:
            sink.close()
        else:
            sys.stdout.flush()
    return n


def _csv_ready(batch):
    """Nested columns as JSON text, so that CSV can hold them."""
    import pyarrow as pa

    for name in ("probabilities", "top_tags"):
        i = batch.schema.get_field_index(name)
        values = [json.dumps(dict(v) if name == "probabilities" else v) if v is not None
                  else None for v in batch.column(name).to_pylist()]
        batch = batch.set_column(i, name, pa.array(values, pa.string()))
    return batch


def cmd_migrate(args) -> dict:
    from pipeline.storage.migrate import migrate

    s = migrate(args.directory)
    if s["kind"] == "bundle":
        print(f"migrate: bundle {s['model_id']}: the hashes of its {s['files']} files recorded "
              f"in {s['table']}/bundle.json")
    else:
        print(f"migrate: {s['kind']} of {s['songs']} songs in {s['files']} file(s) -> "
              f"{s['table']}")
    return s


def cmd_demo(args) -> dict:
    from pipeline.demo import run_demo

    s = run_demo(args.workdir, songs_per_genre=args.songs_per_genre, epochs=args.epochs,
                 num_workers=args.num_workers)
    print(json.dumps(s["outputs"], indent=2))
    print(f"demo: song accuracy on held-out synthesised songs {s['song_accuracy']:.3f}, "
          f"labels of {s['labelled']} songs in {s['outputs']['labels']}")
    return s


def cmd_weights(args) -> dict:
    from pipeline.storage.weights import cache_dir, fetch_wheel, read_tags

    wheel = fetch_wheel()
    tags = {name: len(read_tags(name)) for name in ("MSD", "MTT")}
    print(f"weights: musicnn 0.1.0 ({', '.join(f'{k} {v} tags' for k, v in tags.items())}) "
          f"in {wheel.parent}")
    return {"cache": str(cache_dir())}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:  # the libraries' own logs too (see quiet_libraries)
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"extract": cmd_extract, "train": cmd_train, "score": cmd_score,
                "tag": lambda a: cmd_score(a, tag=True), "latest": cmd_latest, "report": cmd_report,
                "migrate": cmd_migrate, "demo": cmd_demo, "weights": cmd_weights}
    if getattr(args, "allow_http", False):  # read by the workers too (see runtime_env)
        from pipeline.storage.fs import SCHEMES_ENV, allowed_schemes

        os.environ[SCHEMES_ENV] = ",".join((*allowed_schemes(), "http", "https"))
    try:
        commands[args.command](args)
    except GenresError as e:
        print(f"genres {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
