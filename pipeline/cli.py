"""The `genres` command: parse, call one library function, report."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline.errors import CatalogError, GenresError

log = logging.getLogger("genres")


def _number(kind: type, *, minimum: float, inclusive: bool):
    """argparse type: a number of ``kind`` above ``minimum`` (or equal, if ``inclusive``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum}, "
                                             f"got {text}")
        return value

    return parse


_positive_float = _number(float, minimum=0, inclusive=False)
_nonneg_float = _number(float, minimum=0, inclusive=True)
_positive_int = _number(int, minimum=0, inclusive=False)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genres", description="Tag music catalogs with genres on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def ray_address(p):
        p.add_argument("--address", default=None,
                       help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")

    p = sub.add_parser("extract", help="decode audio into frame features (Parquet shards)")
    p.add_argument("catalog", help="audio file, folder, manifest (.csv/.parquet) or URI")
    p.add_argument("--out", required=True, help="feature directory (local or URI)")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="first folder level under the catalog root is the label")
    p.add_argument("--features", default="frames",
                   choices=["frames", "musicnn", "musicnn:MSD", "musicnn:MTT"],
                   help="frames: MFCC + log-mel per frame; musicnn[:MSD|MTT]: pretrained "
                        "embeddings per 3 s patch (default MSD)")
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
                   help="musicnn features: each task takes a GPU (TensorFlow runs there)")
    p.add_argument("--overwrite", action="store_true", help="delete OUT and start fresh")
    ray_address(p)

    p = sub.add_parser("train", help="fit a model on Ray Train and write a model bundle")
    p.add_argument("features", help="feature directory written by `genres extract` (or, with "
                                    "--frame-table, a CSV/Parquet table of frame features)")
    p.add_argument("--out", required=True, help="model bundle directory")
    p.add_argument("--model", default="cnn2d",
                   help="cnn2d (default), cnn1d, cnn1d_mel100ms, dnn, mil, or embed (musicnn "
                        "features)")
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
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="frames (songs for mil) per optimizer step, over all workers")
    p.add_argument("--patience", type=_positive_int, default=6,
                   help="early stopping: epochs without validation-loss improvement")
    p.add_argument("--num-workers", type=_positive_int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bag-frames", type=_positive_int, default=16,
                   help="mil: at most this many frames per song in a bag (drawn anew each epoch)")
    p.add_argument("--storage-path", default=None,
                   help="Ray Train checkpoint storage (shared storage on multi-node clusters; "
                        "default ~/ray_results)")
    p.add_argument("--run-name", default=None,
                   help="Ray Train run name (default: derived from --out, the settings and the "
                        "data, so a re-run resumes from its last epoch checkpoint)")
    ray_address(p)

    for name, text in (("score", "label every song of a catalog"),
                       ("tag", "label only songs not yet labelled by this model (schedules)")):
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
                       help="one GPU per model actor (as many actors as the cluster has GPUs)")
        ray_address(p)

    p = sub.add_parser("latest", help="the latest label of every song in a labels directory")
    p.add_argument("labels", help="labels directory written by `genres score`/`genres tag`")
    p.add_argument("--model-id", default=None, help="only labels of this model_id")
    p.add_argument("--out", default=None,
                   help="write the rows to this .parquet or .csv file (default: CSV on stdout)")

    sub.add_parser("weights", help="fetch the pretrained musicnn weights into the cache "
                                   "($GENRES_CACHE or ~/.cache/genres)")

    p = sub.add_parser("demo", help="the whole flow on synthesised songs, embedded local Ray")
    p.add_argument("--workdir", default="genres-demo", help="where the demo writes (default: ./genres-demo)")
    p.add_argument("--songs-per-genre", type=_positive_int, default=12)
    p.add_argument("--epochs", type=_positive_int, default=12)
    p.add_argument("--num-workers", type=_positive_int, default=2)
    return parser


def _spec_from(args):
    from pipeline.features import FeatureSpec

    if args.features.startswith("musicnn"):
        from pipeline.features.spec import EmbeddingSpec
        from pipeline.storage.weights import fetch_wheel, weights_hash

        fetch_wheel()  # before any Ray work: a missing download fails here, once
        model = args.features.split(":")[1] if ":" in args.features else "MSD"
        return EmbeddingSpec(model=model, weights=weights_hash(),
                             offset_seconds=args.offset_seconds, max_seconds=args.max_seconds,
                             dtype=args.dtype)
    return FeatureSpec(sample_rate=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop_length,
                       n_mels=args.n_mels, n_mfcc=args.n_mfcc, frame_seconds=args.frame_seconds,
                       hop_seconds=args.hop_seconds, offset_seconds=args.offset_seconds,
                       max_seconds=args.max_seconds, dtype=args.dtype)


def cmd_extract(args) -> dict:
    from pipeline.runtime.extract import run_extract

    s = run_extract(args.catalog, args.out, _spec_from(args),
                    labels_from_folders=args.labels_from_folders, overwrite=args.overwrite,
                    address=args.address, songs_per_task=args.songs_per_task,
                    use_gpu=args.use_gpu)
    failed = sum(s["errors"].values())
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())) or "none"
    rtf = s["audio_seconds"] / s["seconds"] if s["seconds"] else 0.0
    print(f"extract: {s['songs']} songs in, {s['skipped']} already done, {s['ok']} ok, "
          f"{failed} failed ({kinds}), {s['frames']} frames, "
          f"{s['audio_seconds'] / 3600:.2f} h audio, {s['seconds']:.1f} s, {rtf:.0f}x realtime "
          f"-> {s['out']}")
    return s


def cmd_train(args) -> dict:
    from pipeline.runtime.train import TrainConfig, run_train

    config = TrainConfig(model=args.model, split=args.split, epochs=args.epochs,
                         batch_size=args.batch_size, patience=args.patience,
                         num_workers=args.num_workers, use_gpu=args.use_gpu, seed=args.seed,
                         bag_frames=args.bag_frames,
                         frame_table=args.frame_table, name_column=args.name_column,
                         song_pattern=args.song_pattern, label_column=args.label_column,
                         splits=args.splits)
    s = run_train(args.features, args.out, config, address=args.address,
                  storage_path=args.storage_path, run_name=args.run_name)
    test = s["metrics"].get("test")
    if test:
        songs = ", ".join(f"{k} {v:.3f}" for k, v in test["song_accuracy"].items())
        frames = (f"frame accuracy {test['frame_accuracy']:.3f}, "
                  if test["frame_accuracy"] is not None else "")
        quality = f"test: {test['songs']} songs, {frames}song accuracy {songs}"
    else:
        quality = "no test songs in this split"
    print(f"train: {s['model']} on {s['train_songs']} train / {s['valid_songs']} valid songs, "
          f"{s['epochs']} epochs, {s['seconds']:.1f} s; {quality} -> {s['out']} "
          f"(model_id {s['model_id']})")
    return s


def cmd_score(args, *, tag: bool = False) -> dict:
    from pipeline.runtime.score import run_score

    s = run_score(args.catalog, args.model, args.out, aggregate=args.aggregate,
                  batch_size=args.batch_size, address=args.address, zero_shot=args.tags,
                  top_k=args.top_k, use_gpu=args.use_gpu)
    print(f"{'tag' if tag else 'score'}: {s['songs']} songs in, {s['skipped']} already labelled, "
          f"{s['labelled']} labelled, {s['failed']} failed, {s['frames']} frames, "
          f"{s['seconds']:.1f} s -> {s['out']}")
    return s


def cmd_latest(args) -> dict:
    from pipeline.storage.labels import LabelStore
    from pipeline.storage.fs import exists, join

    if not exists(join(args.labels, "_commits")):
        raise CatalogError(f"{args.labels} is not a labels directory (no _commits/); "
                           f"write one with `genres score` or `genres tag`")
    table = LabelStore(args.labels).latest(args.model_id)
    frame = table.to_pandas()
    frame["probabilities"] = [dict(p) for p in frame["probabilities"]]
    if args.out is None:
        frame.to_csv(sys.stdout, index=False)
    elif args.out.endswith(".csv"):
        frame.to_csv(args.out, index=False)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, args.out)
    if args.out:
        print(f"latest: {len(frame)} songs -> {args.out}")
    return {"songs": len(frame)}


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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"extract": cmd_extract, "train": cmd_train, "score": cmd_score,
                "tag": lambda a: cmd_score(a, tag=True), "latest": cmd_latest, "demo": cmd_demo,
                "weights": cmd_weights}
    try:
        commands[args.command](args)
    except GenresError as e:
        print(f"genres {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
