"""Command-line start-up: building only the invoked command's options against building them all.

The options come from the configuration classes (maniflow.config), and some of those sit with
torch-heavy stages; `maniflow.cli.build_parser(command)` builds only `command`'s options, so a
command imports only what it needs. This prints, per command, the median wall time of a fresh
interpreter that builds the parser and parses `COMMAND --help` both ways:

    python benchmarks/bench_cli.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = ("inspect", "extract", "paths", "render", "train", "evaluate")
SNIPPET = """
import contextlib, io, sys
from maniflow.cli import build_parser
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    build_parser({only!r}).parse_args([{command!r}, "--help"])
"""


def seconds(command: str, only: str | None, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", SNIPPET.format(only=only, command=command)], check=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    seconds("inspect", "inspect", 1)  # warm the file cache
    out = {c: {"this_command_s": seconds(c, c, args.repeat), "every_command_s": seconds(c, None, args.repeat)}
           for c in COMMANDS}
    print(json.dumps({"repeat": args.repeat, "median_seconds": out}, indent=1))


if __name__ == "__main__":
    main()
