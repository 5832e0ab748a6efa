"""A successful command prints its own progress and summary, not its libraries' logs."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow]

QUIETING = ("TF_CPP_MIN_LOG_LEVEL", "RAY_DATA_LOG_LEVEL", "RAY_DATA_DISABLE_PROGRESS_BARS",
            "GENRES_VERBOSE")
# the project's own lines: its log records, the demo's outputs (JSON) and summaries
OURS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) pipeline\.|"
                  r"[{}]|\s+\"\w+\": |(extract|train|score|demo): )")


def _demo_output(tmp_path) -> str:
    """The demo's stdout and stderr together: as ``.ci/run`` captured its run of
    ``scripts/demo.sh`` (``GENRES_DEMO_OUTPUT``: the first command a user runs, whole, not run a
    second time), else from a small demo run here in a subprocess."""
    captured = os.environ.get("GENRES_DEMO_OUTPUT")
    if captured:
        text = open(captured).read()
        # what the script ran after installing: from its first line of genres on
        return text[text.index("weights: musicnn"):]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--workdir", str(tmp_path / "demo"),
         "--songs-per-genre", "6", "--epochs", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
        # as a user's shell has it: none of the settings the test session made for itself
        env={**{k: v for k, v in os.environ.items() if k not in QUIETING}, "RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stdout[-3000:]
    return result.stdout


def test_the_demo_prints_its_own_progress_and_summary_and_little_else(tmp_path):
    lines = [ln for ln in _demo_output(tmp_path).splitlines() if ln.strip()]
    theirs = [ln for ln in lines if not OURS.match(ln)]
    # a handful at most (Ray Train's controller reports one line per run that the driver
    # cannot reach), and nothing after the summary
    assert len(theirs) <= 5, "\n".join(theirs)
    assert lines[-1].startswith("demo: song accuracy"), lines[-5:]
    assert sum(ln.startswith("extract: ") or "pipeline." in ln for ln in lines) >= 3
