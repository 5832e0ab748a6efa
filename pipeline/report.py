"""The catalog report as one self-contained HTML page (plots inline as SVG: opens offline,
no server, no CDN), and its review lists as CSV; from the figures of
:func:`pipeline.runtime.report.report_summary`. No Ray here."""

from __future__ import annotations

import csv
import html
import io
import json

import numpy as np

from pipeline.evaluate import FITTED_ON
from pipeline.plots import confusion_figure, pyplot

REVIEW_LISTS = ("least_confident", "most_confused")


def write_report(figures: dict, out: str) -> dict[str, str]:
    """Write the page to ``out`` and each review list next to it (``<out stem>-<list>.csv``,
    every model's rows with their model_id); the paths written, by name."""
    from pipeline.storage import fs as fsio

    stem = out[:-5] if out.lower().endswith(".html") else out
    written = {"html": out}
    fsio.write_bytes_atomic(out, render(figures).encode())
    for name in REVIEW_LISTS:
        path = f"{stem}-{name.replace('_', '-')}.csv"
        fsio.write_bytes_atomic(path, review_csv(figures, name).encode())
        written[name] = path
    return written


def review_csv(figures: dict, name: str) -> str:
    """The review list ``name`` of every model as CSV text."""
    rows = [{"model_id": model, **row} for model, data in figures["models"].items()
            for row in data[name]]
    buffer = io.StringIO()
    fields = ["model_id"] + (list(rows[0])[1:] if rows else ["song_id", "uri"])
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def render(figures: dict) -> str:
    """The report page: the run, the model, genres per model, confidence, review lists,
    changes."""
    models = figures["models"]
    parts = [f"<h1>Catalog report</h1><p>Labels table <code>{_e(figures['table'])}</code>, "
             f"version {figures['version']}.</p>", _summary(figures)]
    if figures.get("run"):
        run = figures["run"]
        parts.append("<h2>Last run</h2>" + _table(
            ["run_id", "models", "songs", "labelled", "errors", "commits", "started",
             "seconds"],
            [[run["run_id"], ", ".join(run["model_ids"]), run["songs"], run["labelled"],
              _kinds(run["errors"]), run["commits"], run["started"], run["seconds"]]]))
    if figures.get("bundle"):
        parts.append(_bundle(figures["bundle"]))
    if models:
        parts.append("<h2>Genres per model</h2>" + _svg(_genre_bars(models)) + _table(
            ["model_id", "songs", "labelled", "errors", "genre", "songs", "share"],
            [[m, d["songs"], d["labelled"], _kinds(d["errors"]), g, n, f"{d['shares'][g]:.1%}"]
             for m, d in models.items() for g, n in d["genres"].items()]))
    for model, data in models.items():
        below = data["below_threshold"] / max(1, data["labelled"])
        parts.append(f"<h2>Model <code>{_e(model)}</code></h2>"
                     f"<h3>Confidence</h3><p>{data['below_threshold']} songs ({below:.1%}) below "
                     f"{figures['threshold']}.</p>"
                     + _svg(_histograms(data["histograms"], figures["threshold"])))
        if data.get("attempts"):  # songs whose latest try failed, by how many tries so far
            parts.append("<h3>Songs without a label, by tries</h3>" + _table(
                ["tries", "songs", "errors"],
                [[a, sum(kinds.values()), _kinds(kinds)]
                 for a, kinds in data["attempts"].items()]))
        parts.append("<h3>Least confident songs</h3>" + _table(
            ["song_id", "uri", "genre", "confidence"],
            [[r["song_id"], r["uri"], r["genre"], f"{r['confidence']:.3f}"]
             for r in data["least_confident"]]))
        parts.append("<h3>Most confused songs</h3>" + _table(
            ["song_id", "uri", "first", "second", "margin"],
            [[r["song_id"], r["uri"], r["first"], r["second"], f"{r['margin']:.3f}"]
             for r in data["most_confused"]])
            + "<h3>Confused pairs of genres</h3>" + _table(
                ["genres", "songs"], [[k.replace("|", " / "), n]
                                      for k, n in data["confused_pairs"].items()]))
        if "changes" in data:
            change = data["changes"]
            parts.append(f"<h3>Since version {change['since']}</h3><p>{change['added']} songs "
                         f"added, {change['songs_changed']} changed label; errors since: "
                         f"{_kinds(change['errors']) or 'none'}.</p>" + _matrix(change["changed"]))
    summary = json.dumps(figures, indent=1, default=str)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Catalog report</title>"
            "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:"
            "collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
            "</style></head><body>" + "".join(parts)
            + f"<details><summary>Figures (JSON)</summary><pre>{_e(summary)}</pre></details>"
            "</body></html>")


def _bundle(bundle: dict) -> str:
    test = bundle.get("test") or {}
    out = f"<h2>Model bundle</h2><p>model_id <code>{_e(bundle['model_id'])}</code>"
    accuracy = test.get("song_accuracy") or {}
    if accuracy:
        out += ", test song accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    out += f" ({test.get('songs', 0)} test songs).</p>"
    calibration = bundle.get("calibration") or {}
    if calibration.get("test"):  # what the confidences below mean
        figures = calibration["test"]
        fitted_on = calibration.get("fitted_on", "valid")
        if fitted_on in FITTED_ON:
            out += (f"<p>Confidences are calibrated probabilities of the "
                    f"<code>{_e(calibration['aggregator'])}</code> scores: temperature "
                    f"{calibration['temperature']:.2f} fitted on {calibration['songs']} "
                    f"{FITTED_ON[fitted_on]}; expected calibration error on the test songs "
                    f"{figures['ece_before']:.3f} before, {figures['ece_after']:.3f} after.</p>")
        else:
            out += (f"<p>Confidences are the <code>{_e(calibration['aggregator'])}</code> "
                    f"scores as the model gives them: {calibration['songs']} songs are too "
                    f"few to fit a temperature on. Expected calibration error on the "
                    f"test songs {figures['ece_before']:.3f}.</p>")
    classes = bundle.get("classes") or []
    matrices = test.get("confusion") or {}
    if matrices:  # the aggregator scoring uses large, the others as small multiples
        kept = (bundle.get("calibration") or {}).get("aggregator")
        kept = kept if kept in matrices else next(iter(matrices))
        out += (f"<h3>Confusion of the test songs ({_e(kept)}; rows: truth)</h3>"
                + _svg(confusion_figure(matrices[kept], classes)))
        others = [name for name in matrices if name != kept]
        if others:
            out += ("<h4>Other aggregators</h4><div style='display:flex;flex-wrap:wrap'>"
                    + "".join(_svg(confusion_figure(matrices[name], classes, name, scale=0.6))
                              for name in others) + "</div>")
    return out


def _summary(figures: dict) -> str:
    """One paragraph at the top: what was labelled, by which model, how sure, what failed."""
    models = figures["models"]
    labelled = sum(d["labelled"] for d in models.values())
    songs = sum(d["songs"] for d in models.values())
    errors: dict = {}
    for d in models.values():
        for kind, n in d["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    below = sum(d["below_threshold"] for d in models.values())
    parts = [f"{labelled} of {songs} songs labelled by {len(models)} model(s)",
             f"{below} below confidence {figures['threshold']}",
             f"errors: {_kinds(errors) or 'none'}"]
    bundle = figures.get("bundle") or {}
    accuracy = ((bundle.get("test") or {}).get("song_accuracy") or {})
    if accuracy:
        kept = (bundle.get("calibration") or {}).get("aggregator")
        name = kept if kept in accuracy else next(iter(accuracy))
        parts.append(f"model {bundle['model_id']}: test song accuracy {accuracy[name]:.3f} "
                     f"({name})")
    if figures.get("run"):
        run = figures["run"]
        parts.append(f"last run {run['run_id']}: {run['labelled']} labelled, "
                     f"{float(run['seconds'] or 0):.0f} s")
    return "<p><strong>Summary:</strong> " + "; ".join(_e(p) for p in parts) + ".</p>"


def _genre_bars(models: dict):
    plt = pyplot()

    genres = sorted({g for d in models.values() for g in d["genres"]})
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / max(1, len(models))
    for i, (model, data) in enumerate(models.items()):
        ax.bar(np.arange(len(genres)) + i * width, [data["genres"].get(g, 0) for g in genres],
               width, label=model[:12])
    ax.set_xticks(np.arange(len(genres)) + 0.4 - width / 2, genres, rotation=30)
    ax.set_ylabel("songs")
    ax.legend(fontsize="small")
    return fig


def _histograms(histograms: dict, threshold: float):
    """Each genre's confidence histogram in a small plot of its own (overlaid, the last one
    hid the others), the threshold dashed."""
    plt = pyplot()

    genres = sorted(histograms)
    columns = min(4, max(1, len(genres)))
    rows = -(-max(1, len(genres)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2 * rows), sharex=True,
                             squeeze=False)
    for ax, genre in zip(axes.flat, genres):
        counts = histograms[genre]
        ax.stairs(counts, np.linspace(0, 1, len(counts) + 1), fill=True, alpha=0.7)
        ax.axvline(threshold, color="grey", linestyle="--")
        ax.set_title(f"{genre} ({sum(counts)})", fontsize="small")
    for ax in axes.flat[len(genres):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("songs")
    return fig


def _svg(fig) -> str:
    """A matplotlib figure as inline SVG, closed."""
    plt = pyplot()

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return "<figure>" + text[text.index("<svg"):] + "</figure>"


def _matrix(changed: dict) -> str:
    before = sorted(changed)
    after = sorted({g for moves in changed.values() for g in moves})
    if not before:
        return ""
    return "<p>Label changes (rows: before, columns: now)</p>" + _table(
        [""] + after, [[b] + [changed[b].get(a, 0) for a in after] for b in before])


def _table(header: list, rows: list) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kinds(errors: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(errors.items()))


def _e(value) -> str:
    return html.escape(str(value))
