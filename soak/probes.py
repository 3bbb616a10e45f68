"""Known problems, probed on a server of their own: still there, or fixed?

Each probe reproduces one problem the soak found and says whether it is
still present, so the report stays true while fixes land. A present problem
is reported, not counted as lost: no job or output goes missing in them.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from jobworker.cli.client import list_all
from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients
from soak.disconnects import start
from soak.faults import DEAF
from soak.server import ServerProcess, proc_stat
from soak.system import remove_cgroups

PR_SET_CHILD_SUBREAPER = 36
HUGE_ARG = b"a" * (128 * 1024 - 1)
# More calls than the soak server has threads, whatever its pool size.
THREADS = 200


@dataclass
class Probe:
    """One known problem and what the probe saw."""

    name: str
    present: bool
    seen: str


@dataclass
class Probes:
    results: list[Probe] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def huge_list(clients: Clients) -> Probe:
    """Five 900 KiB commands of bob's against the admin's List."""
    bob = clients.stub("bob")
    command = [b"/bin/true", *[HUGE_ARG] * 7]
    name = "huge commands break the admin's List"
    started = {
        bob.Start(pb.StartRequest(command=command), timeout=60).job.id for _ in range(5)
    }
    try:
        listed = {job.id for job in list_all(clients.stub("alice"), timeout=60)}
    except grpc.RpcError as error:
        return Probe(name, True, f"List: {error.code().name}")
    found = len(started & listed)
    return Probe(name, found < len(started), f"List reached {found} of 5 jobs")


def lockout(clients: Clients) -> Probe:
    """One user's blocking Stop calls against everyone else's calls."""
    bob = clients.stub("bob")
    job_id = start(bob, DEAF)
    request = pb.StopRequest(job_id=job_id, grace_seconds=5)
    stops = [bob.Stop.future(request, timeout=60) for _ in range(THREADS)]
    time.sleep(2)
    name = "one user's Stop calls take every server thread"
    try:
        clients.stub("carol").List(pb.ListRequest(), timeout=10)
        probe = Probe(name, False, "carol's List answered")
    except grpc.RpcError as error:
        probe = Probe(name, True, f"carol's List: {error.code().name}")
    for stop in stops:
        stop.exception()
    return probe


def zombie_inits(clients: Clients) -> Probe:
    """Stops that escalate to KILL, with the soak as subreaper."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        bob = clients.stub("bob")
        for _ in range(3):
            job_id = start(bob, DEAF)
            bob.Stop(pb.StopRequest(job_id=job_id, grace_seconds=0), timeout=60)
        time.sleep(1)
        adopted = [
            int(entry)
            for entry in os.listdir("/proc")
            if entry.isdigit() and proc_stat(int(entry)) == ("Z", os.getpid())
        ]
        for pid in adopted:
            os.waitpid(pid, 0)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    seen = f"{len(adopted)} zombies adopted after 3 KILL escalations"
    return Probe("a KILL escalation orphans the namespace init", bool(adopted), seen)


def held_shutdown(server: ServerProcess, clients: Clients) -> Probe:
    """SIGTERM while a user's long-grace Stop is in progress."""
    bob = clients.stub("bob")
    job_id = start(bob, DEAF)
    request = pb.StopRequest(job_id=job_id, grace_seconds=3600)
    stop: Any = bob.Stop.future(request, timeout=60)
    time.sleep(1)
    code, seconds = server.terminate(server.grace + 10)
    stop.exception()
    name = "an earlier Stop's long grace holds up the shutdown"
    if code is None:
        server.kill()
        remove_cgroups(server.state_dir)
        return Probe(name, True, f"still running {seconds:.0f} s after SIGTERM")
    return Probe(name, False, f"exited after {seconds:.1f} s")


def run(server: ServerProcess) -> Probes:
    """Start the server once more and probe each known problem."""
    result = Probes()
    clients = server.start()
    try:
        for probe in (huge_list, lockout, zombie_inits):
            result.results.append(probe(clients))
        result.results.append(held_shutdown(server, clients))
    finally:
        clients.close()
        server.kill()
    return result


# What each probed problem is, when present (soak/probes.py).
PROBLEMS = {
    "huge commands break the admin's List": (
        "List replies carry every visible job's full command, and a command may"
        " be 1 MiB: five such jobs of bob's push the reply past grpc's default"
        " 4 MiB receive limit, so the admin's and bob's List (and `jobworker"
        " list`) fail with RESOURCE_EXHAUSTED until the server restarts."
        " Test: `test_huge_commands_of_one_user_do_not_break_the_admins_list`."
    ),
    "one user's Stop calls take every server thread": (
        "A Stop call holds a grpc thread until the job ends (up to its grace);"
        " with no cap per caller, 200 concurrent Stop calls by bob on a job that"
        " ignores SIGTERM make carol's calls fail with RESOURCE_EXHAUSTED"
        ' ("Concurrent RPC limit exceeded") until they end.'
        " Test: `test_one_users_blocking_stops_do_not_lock_out_others`."
    ),
    "a KILL escalation orphans the namespace init": (
        "At the KILL step `JobCgroup.kill_all()` SIGKILLs the helper H along"
        " with everything else, before H has reaped the namespace's init I, so"
        " I becomes a zombie of the nearest subreaper (or of PID 1, which reaps"
        " it: the soak itself sees none). A supervisor that is a subreaper and"
        " does not reap would collect one per killed job."
    ),
    "an earlier Stop's long grace holds up the shutdown": (
        "A stopping job keeps its first stop's KILL time (`jobworker/job/machine.py`,"
        " `test_concurrent_stops_share_one_escalation`) and the shutdown's stop"
        " shares it: after a user's Stop with a 1 h (up to 24 h) grace on a job"
        " that ignores SIGTERM, SIGTERM of the server waits that long instead of"
        " the stop grace. Test:"
        " `test_shutdown_is_not_held_up_by_an_earlier_stops_long_grace`."
    ),
}


def render_probes(probes: Probes) -> list[str]:
    """The report's section on the known problems."""
    lines = [
        "## Known problems, probed on a last start of the server",
        "",
        "Problems the soak found, each reproduced again by `soak/probes.py` so",
        "this report says whether it is still there. They lose no job or",
        "output, so they are not counted as lost above.",
        "",
        "| problem | present | what the probe saw |",
        "|---|---|---|",
    ]
    for probe in probes.results:
        present = "**yes**" if probe.present else "no (fixed)"
        lines.append(f"| {probe.name} | {present} | {probe.seen} |")
    lines.append("")
    for probe in probes.results:
        state = "" if probe.present else " (fixed; what it was)"
        lines.append(f"- *{probe.name}*{state}: {PROBLEMS.get(probe.name, '')}")
    return [*lines, ""]
