"""`python -m soak`: run every phase against a real server, write the report.

Needs root (the server runs with full isolation). Everything happens on
127.0.0.1 in a private temporary directory that is removed at the end; an
alarm bounds the whole run. Exits 0 only if nothing was lost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

from soak import disconnects, disk, faults, flood, load, probes, restart, slow, warmup
from soak.client import Clients
from soak.report import Resources, Run, write
from soak.server import ServerProcess, Vitals, make_pki
from soak.system import leftovers, remove_cgroups, work_dirs

# What the soak runs: a change here makes the report's revision dirty.
CODE = ("jobworker", "twisted", "soak", "setup.py", "requirements.lock")
FD_SLACK = 4
# Twisted's reactor thread pool (clean-up work) starts threads on demand,
# up to 10, and keeps them.
THREAD_SLACK = 10
RSS_SLACK_KIB = 64 * 1024
# The warm-up and the disconnects hold all 64 follower slots as one user;
# per-user caps are the flood phase's, on a server of its own.
MAIN_OPTIONS = ("--max-followers-per-user=64",)


class OutOfTime(Exception):
    """The soak ran past its time bound."""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--disconnects", type=int, default=200)
    parser.add_argument("--disconnect-rounds", type=int, default=3)
    parser.add_argument("--crash-jobs", type=int, default=20)
    parser.add_argument("--shutdown-jobs", type=int, default=10)
    parser.add_argument("--restart-jobs", type=int, default=20)
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=14 * 60)
    parser.add_argument("--report", default="doc/reliability.md")
    return parser.parse_args(argv)


def settled(server: ServerProcess, clients: Clients, baseline: Vitals) -> Vitals:
    """Close our connections; the server's vitals once settled (or 10 s)."""
    clients.close()
    deadline = time.monotonic() + 10
    current = server.vitals()
    while time.monotonic() < deadline and (
        current.fds > baseline.fds or resources("", baseline, current).problems
    ):
        time.sleep(0.2)
        current = server.vitals()
    return current


def resources(name: str, baseline: Vitals, after: Vitals) -> Resources:
    problems = []
    if after.threads > baseline.threads + THREAD_SLACK:
        problems.append(
            f"threads {after.threads} > {baseline.threads} + {THREAD_SLACK}"
        )
    if after.fds > baseline.fds + FD_SLACK:
        problems.append(f"fds {after.fds} > {baseline.fds} + {FD_SLACK}")
    if after.rss_kib > baseline.rss_kib + RSS_SLACK_KIB:
        problems.append(f"RSS {after.rss_kib} KiB > {baseline.rss_kib} + 64 MiB")
    return Resources(name, baseline, after, problems)


def restarts_and_floods(
    args: argparse.Namespace, server: ServerProcess, run: Run
) -> None:
    """Restarts on the soak's state dir; the floods on servers of their own."""
    run.restarts = restart.run(server, args.restart_jobs)
    print(f"restarts: {run.restarts}", flush=True)
    run.flood = flood.run(server.work, server.pki_dir, args.grace)
    print(f"flood: {run.flood}", flush=True)
    run.disk = disk.run(server.work, server.pki_dir, args.grace)
    print(f"disk: {run.disk}", flush=True)


def soak(args: argparse.Namespace, work: str, run: Run) -> None:
    users = [f"soak{n}" for n in range(args.clients)]
    pki_dir = os.path.join(work, "pki")
    make_pki(pki_dir, [*users, "flooder", "calm"])
    state_dir = os.path.join(work, "state")
    server = ServerProcess(work, pki_dir, state_dir, args.grace, options=MAIN_OPTIONS)

    def out_of_time(signum: int, frame: FrameType | None) -> None:
        server.kill()  # so every call in progress fails at once
        raise OutOfTime(f"the soak ran past {args.time_limit:g} s")

    signal.signal(signal.SIGALRM, out_of_time)
    try:
        clients = server.start()
        run.fresh = server.vitals()
        run.follower_cap = warmup.fill_pool(clients, [*users, "bob", "carol"])
        clients.close()
        time.sleep(2)  # let the server close the warm-up's connections
        baseline = run.baseline = server.vitals()
        print(f"baseline {baseline}", flush=True)
        run.load = load.run(clients, users, args.jobs, args.seed)
        run.left_after_load = leftovers(state_dir)
        run.work_dirs_after_load = len(work_dirs(state_dir))
        print(f"load: {dict(run.load.ok)} lost {len(run.load.lost)}", flush=True)
        run.resources.append(
            resources("after the jobs", baseline, settled(server, clients, baseline))
        )
        for number in range(1, args.disconnect_rounds + 1):
            drops = disconnects.run(clients, server, args.disconnects, number)
            print(f"drops: {dict(drops.tried)} lost {drops.lost}", flush=True)
            run.drops.append(drops)
            after = settled(server, clients, baseline)
            name = f"after disconnect round {number}"
            run.resources.append(resources(name, baseline, after))
        server.output_cap = slow.SIZE  # from the restart on
        run.crash, clients = faults.crash(server, clients, args.crash_jobs)
        print(f"crash: {run.crash}", flush=True)
        run.stale_job_dirs = len(os.listdir(os.path.join(state_dir, "jobs")))
        run.stale_work_dirs = len(work_dirs(state_dir))
        run.slow = slow.run(server, clients)
        print(f"slow: {run.slow}", flush=True)
        run.shutdown = faults.shutdown(server, clients, args.shutdown_jobs)
        run.work_dirs_after_shutdown = len(work_dirs(state_dir))
        print(f"shutdown: {run.shutdown}", flush=True)
        restarts_and_floods(args, server, run)
        run.probes = probes.run(server)
        print(f"probes: {run.probes}", flush=True)
    finally:
        server.kill()
        run.left = leftovers(state_dir)
        remove_cgroups(state_dir)


def revision() -> str:
    """The commit under test, marked when the code has changes on top."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", *CODE], check=False
        ).returncode
    except OSError:
        return "unknown"
    return f"{head} with uncommitted changes" if changed else head


def main(argv: list[str]) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("soak: needs root (the server isolates jobs)", file=sys.stderr)
        return 2
    signal.alarm(int(args.time_limit))
    work = tempfile.mkdtemp(prefix="jobworker-soak-")
    run = Run({**vars(args), "revision": revision()})
    begin = time.monotonic()
    try:
        soak(args, work, run)
    except Exception as error:  # the report says what broke
        run.errors.append(f"{type(error).__name__}: {error}")
    finally:
        signal.alarm(0)
        run.seconds = time.monotonic() - begin
        shutil.rmtree(work, ignore_errors=True)
    write(args.report, run)
    print(f"soak: {run.lost_count()} lost; report in {args.report}", flush=True)
    return 0 if run.lost_count() == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
