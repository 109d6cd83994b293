"""Command-line start-up: the CLI's options are made from the configuration classes, so where
those classes live decides what every `maniflow` call imports. The classes of the torch-heavy
stages sit in the torch-free `maniflow.settings`; this measures, in fresh interpreters (median
of --repeat), importing them against importing the stage modules that use them, and
`maniflow COMMAND --help` as a user runs it:

    python benchmarks/bench_cli.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("inspect", "extract", "paths", "render", "train", "evaluate")
MANIFLOW = str(Path(sys.executable).with_name("maniflow"))


def seconds(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    seconds([sys.executable, "-c", "import maniflow.train"], 1)  # warm the file cache
    imports = {
        "settings (the configuration classes)": "import maniflow.settings",
        "stages (datasets, train, evaluate)": "import maniflow.datasets, maniflow.train, maniflow.evaluate",
    }
    out = {"repeat": args.repeat,
           "import_s": {k: seconds([sys.executable, "-c", code], args.repeat) for k, code in imports.items()},
           "help_s": {c: seconds([MANIFLOW, c, "--help"], args.repeat) for c in COMMANDS}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
