"""`ray job submit -- python -m jobs.train ARGS`: the same as `genres train ARGS`."""

import sys

from pipeline.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
