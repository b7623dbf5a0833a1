# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The six reliability figures of issue 9 at the issue's sizes.

Runs the scenarios of tests/reliability/scenarios.py (the code the pytest suite
runs at CI size) and prints each figure with its run time:

  1. no packet lost across 100 changes under UDP traffic; a counter keeps counting
  2. 50 module runs killed with SIGKILL at named crash points; the next run converges
  3. 10 module runs at once on one interface
  4. interface / netns deleted, pins deleted by hand, bpffs unmounted
  5. every error case: a clear message, a byte-identical host
  6. 1,000 load + remove cycles: kernel objects and fds end where they started

Run as root: python bench/reliability.py [--scale full|small|changes=N,kills=N,...]
             [--only zero_loss,crash,concurrency,vanishing,bad_input,resources] [--json OUT] [-v]
Everything it creates (veth pairs, namespaces, a bpffs mount, pins, state) is removed.
Exit status 1 when a figure falls short.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reliability"))

import scenarios  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", help="full (the issue's sizes), small (CI) or key=N,...")
    parser.add_argument("--only", default=",".join(scenarios.SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print messages and notes")
    args = parser.parse_args()
    size = scenarios.sizes(args.scale)
    scenarios.collection_root()
    started = time.monotonic()
    figures = []
    with tempfile.TemporaryDirectory(prefix="bpfd-reliability-") as tmp:
        work = pathlib.Path(tmp)
        objects = scenarios.build_objects(work / "objects")
        print("sizes: %s" % ", ".join("%s %d" % kv for kv in size.items()), flush=True)
        for name in args.only.split(","):
            function, key = scenarios.SCENARIOS[name]
            workdir = work / name
            workdir.mkdir()
            figure = function(objects, size[key] if key else 0, workdir)
            figures.append(figure)
            print("\n" + figure.text(), flush=True)
            if args.verbose:
                for line in figure.details:
                    print("    | " + line)
    total = time.monotonic() - started
    short = [f.name for f in figures if f.problems]
    verdict = "all hold" if not short else "SHORT: " + ", ".join(short)
    print("\n%d figure(s) in %.0f s; %s" % (len(figures), total, verdict))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"sizes": size, "seconds": round(total, 1),
             "figures": [{"name": f.name, "seconds": round(f.seconds, 1), "numbers": f.numbers,
                          "problems": f.problems} for f in figures]}, indent=1, default=str))
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
