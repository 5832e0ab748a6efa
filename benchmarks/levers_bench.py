"""What moves test song accuracy on a hard catalog: each quality lever, probed with scikit-learn.

Run quietly:  .venv/bin/python benchmarks/levers_bench.py [--work DIR]

On the game-music catalog (``benchmarks/game_music.py``; label = game, 70/30 split), from
feature directories `genres extract` writes into ``DIR`` (default ``/tmp/genres-bench``,
made when absent): musicnn with ``--pools`` on 60 s from 30 s in (what transfer_bench uses),
musicnn on whole songs, and MFCC + log-mel frames on the 60 s. Every lever is a model on song
vectors (the mean and standard deviation of a song's patches or frames), fitted on the train
songs and measured on the test songs; where a lever picks a setting, 5-fold cross-validation
over the train songs (grouped by song: the catalog names no artist) picks it, and its CV
accuracy is printed beside the test one. The reference row is the logistic regression on the
pools at C = 0.01, what the kept ``pooled`` head fits.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENRES = str(pathlib.Path(sys.executable).parent / "genres")
WINDOW = ["--offset-seconds", "30", "--max-seconds", "60"]
DIRECTORIES = {"musicnn, 60 s": ["--features", "musicnn", "--pools", *WINDOW],
               "musicnn, whole song": ["--features", "musicnn", "--pools"],
               "frames, 60 s": WINDOW}
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def song_vectors(root: str, columns: list[str]) -> tuple:
    """(song ids, [songs, features] mean and std of each column over a song's rows, labels,
    splits), songs sorted by id."""
    from pipeline.storage.shards import FeatureStore, tensor_values

    rows = FeatureStore(root).read_frames(["song_id", "label", "split", *columns])
    song = np.asarray(rows.column("song_id").to_pylist())
    # frames [n, bands, t] become their statistics over time first: [n, 2 * bands]
    values = [tensor_values(rows.column(c)).astype(np.float64) for c in columns]
    values = np.concatenate([v if v.ndim == 2 else np.concatenate([v.mean(2), v.std(2)], 1)
                             for v in values], axis=1)
    ids, first, which = np.unique(song, return_index=True, return_inverse=True)
    count = np.bincount(which)[:, None]
    mean = np.zeros((len(ids), values.shape[1]))
    np.add.at(mean, which, values)
    mean /= count
    var = np.zeros_like(mean)
    np.add.at(var, which, (values - mean[which]) ** 2)
    label = np.asarray(rows.column("label").to_pylist())[first]
    split = np.asarray(rows.column("split").to_pylist())[first]
    return ids, np.hstack([mean, np.sqrt(var / count)]), label, split


def logistic(c: float, balanced: bool = False):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=5000, class_weight="balanced" if balanced else None))


def cv_accuracy(make, x, y) -> float:
    """5-fold CV accuracy over the train songs (one row per song, so no song is split)."""
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(np.mean([(make().fit(x[a], y[a]).predict(x[b]) == y[b]).mean()
                          for a, b in folds.split(x, y)]))


def chosen_by_cv(make_of_c, x, y, train, test) -> tuple[float, float, float]:
    """(C with the best CV accuracy, its CV accuracy, its test accuracy)."""
    cv = {c: cv_accuracy(lambda: make_of_c(c), x[train], y[train]) for c in CS}
    c = max(cv, key=cv.get)
    model = make_of_c(c).fit(x[train], y[train])
    return c, cv[c], float((model.predict(x[test]) == y[test]).mean())


def self_trained(x, y, train, test, c: float = 0.01, rounds: int = 5) -> float:
    """Pseudo-labels: the surer half of the test songs join the train songs, 5 rounds."""
    model = logistic(c).fit(x[train], y[train])
    for _ in range(rounds):
        p = model.predict_proba(x[test])
        sure = p.max(1) >= np.median(p.max(1))
        model = logistic(c).fit(np.vstack([x[train], x[test][sure]]),
                                np.concatenate([y[train], model.classes_[p.argmax(1)][sure]]))
    return float((model.predict(x[test]) == y[test]).mean())


def window_augmented(root: str, c: float = 0.01, windows: int = 10, share: float = 0.5,
                     seed: int = 0) -> float:
    """More of each song as training data: each train song also adds ``windows`` vectors of a
    random ``share`` of its consecutive patches; test songs are their whole 60 s, as scored."""
    from pipeline.storage.shards import FeatureStore, tensor_values

    rows = FeatureStore(root).read_frames(["song_id", "label", "split", "pools"])
    song = np.asarray(rows.column("song_id").to_pylist())
    values = tensor_values(rows.column("pools")).astype(np.float64)
    label, split = (np.asarray(rows.column(c).to_pylist()) for c in ("label", "split"))
    rng, data = np.random.default_rng(seed), {"train": ([], []), "test": ([], [])}
    for s in np.unique(song):
        patches, at = values[song == s], np.flatnonzero(song == s)[0]
        views = [patches]
        if split[at] == "train":
            n = max(2, int(len(patches) * share))
            views += [patches[a:a + n] for a in rng.integers(0, len(patches) - n + 1, windows)]
        for view in views:
            data[split[at]][0].append(np.concatenate([view.mean(0), view.std(0)]))
            data[split[at]][1].append(label[at])
    model = logistic(c).fit(np.array(data["train"][0]), np.array(data["train"][1]))
    return float((model.predict(np.array(data["test"][0])) == np.array(data["test"][1])).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/genres-bench"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import LabelEncoder, StandardScaler, normalize
    from sklearn.semi_supervised import LabelSpreading
    from sklearn.svm import SVC

    from game_music import build

    manifest = build(args.work / "game-music")
    roots = {}
    for name, options in DIRECTORIES.items():
        roots[name] = args.work / ("levers-" + name.replace(", ", "-").replace(" ", "-"))
        if not (roots[name] / "_spec.json").exists():
            subprocess.run([GENRES, "extract", str(manifest), "--out", str(roots[name]),
                            *options], check=True, capture_output=True)
    vectors = {"pools, 60 s": song_vectors(str(roots["musicnn, 60 s"]), ["pools"]),
               "pools, whole song": song_vectors(str(roots["musicnn, whole song"]), ["pools"]),
               "embedding + pools, 60 s": song_vectors(str(roots["musicnn, 60 s"]),
                                                       ["embedding", "pools"]),
               "MFCC + log-mel, 60 s": song_vectors(str(roots["frames, 60 s"]),
                                                    ["mfcc", "logmel"])}
    rows = []

    def row(lever: str, data: str, test: float, cv: float | None = None, note: str = ""):
        rows.append((lever, data, test, cv, note))
        print(f"{lever} [{data}]: test {test:.3f}" + (f", CV {cv:.3f}" if cv else ""), flush=True)

    ids, x, y, split = vectors["pools, 60 s"]
    train, test = split == "train", split == "test"
    reference = logistic(0.01).fit(x[train], y[train])
    row("logistic C=0.01 (the pooled head's fit)", "pools, 60 s",
        float((reference.predict(x[test]) == y[test]).mean()),
        cv_accuracy(lambda: logistic(0.01), x[train], y[train]))
    for data, (_, xv, yv, sv) in vectors.items():
        c, cv, acc = chosen_by_cv(logistic, xv, yv, sv == "train", sv == "test")
        row("logistic, C by CV", data, acc, cv, f"C={c}")
    c, cv, acc = chosen_by_cv(lambda c: logistic(c, balanced=True), x, y, train, test)
    row("logistic, balanced class weights, C by CV", "pools, 60 s", acc, cv, f"C={c}")
    # late fusion: the two views' log-probabilities added (each fitted on its own)
    _, xf, yf, sf = vectors["MFCC + log-mel, 60 s"]
    both = np.intersect1d(ids, vectors["MFCC + log-mel, 60 s"][0])
    a, b = np.searchsorted(ids, both), np.searchsorted(vectors["MFCC + log-mel, 60 s"][0], both)
    tr, te = train[a], test[a]
    fused = []
    for cf in (0.01, 0.1):
        m1, m2 = logistic(0.01).fit(x[a][tr], y[a][tr]), logistic(cf).fit(xf[b][tr], y[a][tr])
        p = np.log(m1.predict_proba(x[a][te]) + 1e-9) + np.log(m2.predict_proba(xf[b][te]) + 1e-9)
        fused.append(float((m1.classes_[p.argmax(1)] == y[a][te]).mean()))
    row("late fusion: pools (C=0.01) + MFCC/log-mel statistics", "both, 60 s", max(fused),
        note="best of the log-mel C in (0.01, 0.1): " + ", ".join(f"{v:.3f}" for v in fused))
    for k in (3, 5, 9):
        knn = make_pipeline(StandardScaler(), KNeighborsClassifier(k, metric="cosine"))
        row(f"{k}-nearest songs (cosine)", "pools, 60 s",
            float((knn.fit(x[train], y[train]).predict(x[test]) == y[test]).mean()))
    svm = make_pipeline(StandardScaler(), SVC(kernel="linear", C=0.001))
    row("linear SVM, C=0.001", "pools, 60 s",
        float((svm.fit(x[train], y[train]).predict(x[test]) == y[test]).mean()))
    row("self-training on the test songs' pseudo-labels", "pools, 60 s",
        self_trained(x, y, train, test))
    codes = LabelEncoder().fit(y)
    spread = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2).fit(
        normalize(StandardScaler().fit_transform(x)), np.where(train, codes.transform(y), -1))
    row("label spreading over all songs (10-NN graph)", "pools, 60 s",
        float((spread.transduction_[test] == codes.transform(y[test])).mean()))
    row("10 random half-windows per train song as extra rows", "pools, 60 s",
        window_augmented(str(roots["musicnn, 60 s"])))
    print(f"\n{train.sum()} train / {test.sum()} test songs\n")
    print("| lever | data | test song accuracy | CV accuracy (train songs) | note |")
    print("|---|---|---|---|---|")
    for lever, data, acc, cv, note in rows:
        print(f"| {lever} | {data} | {acc:.3f} | {'' if cv is None else f'{cv:.3f}'} | {note} |")


if __name__ == "__main__":
    main()
