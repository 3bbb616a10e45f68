"""`python -m bench`: run the suite, print the table, write doc/performance.md."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from bench import flood, report
from bench.suite import QUICK, Plan, Suite, rows
from jobworker import pki

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(HERE, name)) as file:
        return file.read()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default="doc/performance.md", help="the report")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, to try the suite out"
    )
    parser.add_argument(
        "--only",
        choices=["flood"],
        help="run one figure and print its rows (writes no report)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (isolated jobs use cgroups and namespaces)")
        return 2
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    neighbours = report.busy_neighbours()
    load = report.load_average()
    work = tempfile.mkdtemp(prefix="jobworker-bench-", dir="/var/tmp")
    suite = Suite(QUICK if args.quick else Plan(), os.path.join(work, "pki"), work)
    stop_watching = threading.Event()

    def watch() -> None:
        while not stop_watching.wait(5.0):
            neighbours.extend(report.busy_neighbours(work))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    if args.only:
        try:
            pki.init(suite.pki)
            suite.run_flood()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(report.table(flood.rows(suite.results["flood"])))
        return 1 if suite.leftovers else 0
    try:
        pki.init(suite.pki)
        suite.run()
    finally:
        stop_watching.set()
        watcher.join()
        shutil.rmtree(work, ignore_errors=True)
    neighbours = sorted(set(neighbours))
    table = rows(suite.results)
    seconds = time.monotonic() - began
    conditions = [
        f"Load average {load} at the start, {report.load_average()} at the end.",
        (
            f"Other test, soak or server runs shared the machine during this run"
            f" ({len(neighbours)} processes seen every 5 s, e.g."
            f" `{neighbours[0]}`)."
            if neighbours
            else "No other test run was seen on the machine during this run."
        ),
    ]
    if suite.leftovers:
        conditions.append(f"LEFT BEHIND: {', '.join(suite.leftovers)}")
    command = "make bench" + (" (python -m bench --quick)" if args.quick else "")
    text = report.document(
        table,
        date=date,
        command=command,
        seconds=seconds,
        conditions=conditions,
        method=_read("method.md"),
        notes=_read("notes.md"),
    )
    print(report.table(table))
    print("\n".join(conditions))
    with open(args.out, "w") as out:
        out.write(text)
    print(f"bench: wrote {args.out} in {seconds:.0f} s")
    if suite.leftovers:
        print(f"bench: left behind: {suite.leftovers}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
