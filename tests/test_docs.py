"""The docs quote commands a user will paste: each script, benchmark and `genres` option they
name must exist (a renamed flag or a moved benchmark fails here, not in a user's shell)."""

import argparse
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code(text: str) -> list[str]:
    """The commands of fenced code blocks (a line with its indented or backslashed
    continuation lines) and the inline code spans of a Markdown text."""
    lines = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if lines and line[:1].isspace() and line.strip() or lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1].rstrip("\\") + " " + line.strip()
            else:
                lines.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return lines + re.findall(r"`([^`\n]+)`", prose)


def _options() -> dict[str, set[str]]:
    """Each `genres` subcommand's options."""
    from pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for action in p._actions for o in action.option_strings}
            for name, p in sub.choices.items()}


def test_every_quoted_path_and_genres_option_exists():
    options, wrong = _options(), []
    for doc in DOCS:
        for line in _code(doc.read_text()):
            for path in re.findall(r"\b((?:benchmarks|scripts|tests|jobs|pipeline|docs|\.ci)"
                                   r"/[\w./-]*\w)", line):
                if not (ROOT / path).exists() and "*" not in path:
                    wrong.append(f"{doc.name}: {path} does not exist")
            for command in re.finditer(r"(?:^|[\s(;&|$])(?:\.venv/bin/)?genres\s+([a-z]+)(.*)",
                                       line):
                name, rest = command.groups()
                rest = re.split(r" \| | #|;|&&|\bgenres\s", rest)[0]  # this command only
                if name not in options:
                    if name not in ("demo", "weights") and not rest.strip():
                        continue  # prose: "genres tags", not a command
                    if name not in options:
                        wrong.append(f"{doc.name}: `genres {name}` is no subcommand")
                        continue
                try:
                    words = shlex.split(rest, posix=True)
                except ValueError:
                    words = rest.split()
                for word in words:
                    flag = word.split("=", 1)[0].strip("[](),.")
                    if flag.startswith("--") and flag not in options[name] | {"--help"}:
                        wrong.append(f"{doc.name}: `genres {name} {flag}` is no option")
    assert not wrong, "\n".join(wrong)
