"""The report's sections on the restart and flood phases (doc/reliability.md)."""

from __future__ import annotations

from bench.stats import percentile
from soak.disk import FLOOR, ROOM, SIZE, Disk
from soak.flood import FOLLOWERS, JOB_CAP, OPTIONS, QUOTA, SHARE, Flood
from soak.restart import FINISHED, Restart


def render_restarts(results: list[Restart], count: int) -> list[str]:
    lines = [
        "## 6. Restart on the same state directory (journal, live restore)",
        "",
        f"{FINISHED} jobs run to their end (100 kB of random bytes each) and"
        f" {count} running jobs writing numbered ticks; then the server is"
        " signalled and started again on the same state dir. Finished jobs must"
        " come back with their exact Status and output (SHA-256); running ones"
        " with an honest ending (after SIGKILL: LOST, nobody saw their end;"
        " after SIGTERM: KILLED with stop_requested), their ticks readable from"
        " offset 0 without a gap, as far as they were written. Under"
        " `--live-restore` (the server runs with it before and after) every"
        " running job must come back RUNNING, re-adopted, and have written on"
        " while no server ran; it is then stopped and must show every tick from"
        " the first, none missing or repeated (0 output bytes lost), and end"
        " KILLED with stop_requested. In every mode none of the jobs' cgroups,"
        " processes, mounts or work directories may be left.",
        "",
        "| signal | running jobs came back | ticks read back (bytes) | finished"
        " jobs unchanged | server down (s) | left behind | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        endings = ", ".join(
            f"{n} {state.removeprefix('JOB_STATE_')}" for state, n in r.endings.items()
        )
        changed = sum("finished job" in problem for problem in r.lost)
        lines.append(
            f"| {r.mode} | {endings} | {r.ticks} ({r.output_bytes}) |"
            f" {r.finished - changed}/{r.finished} | {r.down_seconds:.1f} |"
            f" {r.left} | {len(r.lost)} |"
        )
    return [
        *lines,
        "",
        "`--live-restore` (issue 15 item 3) is not on main yet: its variant,"
        " RUNNING and re-adopted with 0 output bytes lost, is one more mode in"
        " `soak/restart.py` (`MODES`).",
        "",
    ]


def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f}" if values else "-"


def render_flood(f: Flood) -> list[str]:
    c = f.calm
    p99_before, p99_during = _ms(c.before, 0.99), _ms(c.during, 0.99)
    calls = sum(c.calls.values())
    refusals = ", ".join(f"{n} x {what}" for what, n in f.refusals.items())
    floods = ", ".join(
        f"{n} {how.removeprefix('JOB_STATE_')}" for how, n in f.floods.items()
    )
    ratio = "-"
    if c.before and c.during:
        ratio = f"{percentile(c.during, 0.99) / percentile(c.before, 0.99):.1f}"
    return [
        "## 7. One user floods, another works",
        "",
        f"A server of its own with small caps (`{' '.join(OPTIONS)}`, output"
        f" cap 2 MiB). `flooder` (its own certificate) starts {3 * JOB_CAP}"
        f" jobs at once (cap {JOB_CAP}: {f.started['sleepers']} ran), opens"
        f" followers past its share ({SHARE} of {FOLLOWERS}:"
        f" {f.started['followers']} served), makes {f.bad_calls} Status, Stop"
        " and StreamOutput calls with bad ids (1 MiB long, non-printable,"
        " unknown), then floods output 4 jobs at a time until a Start is refused"
        f" for its quota ({QUOTA >> 20} MiB): {floods}, {f.flood_bytes} bytes"
        f" kept in all. Refusals: {refusals}; each with RESOURCE_EXHAUSTED and"
        " a message naming the cap; bad ids INVALID_ARGUMENT (too long) or"
        " NOT_FOUND, never echoing the id, printable. The server log grew"
        f" {f.log_growth / 1024:.0f} KiB over the {f.seconds:.0f} s of flood.",
        "",
        f"Meanwhile `calm` made {calls} calls ("
        + ", ".join(f"{n} {m}" for m, n in c.calls.items())
        + f") starting, following and listing its own jobs: {len(c.failures)}"
        " failed. Its Status calls on its own job, one after the other:",
        "",
        "| calm's Status | calls | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| before the flood | {len(c.before)} | {_ms(c.before, 0.5)} | {p99_before} |",
        f"| during the flood | {len(c.during)} | {_ms(c.during, 0.5)} | {p99_during} |",
        "",
        f"p99 during / before: {ratio} (2 shared CPUs, the flood's jobs"
        " included). Left by the flood server after SIGTERM:"
        f" {f.left.describe()}. Lost: {len(f.lost)}.",
        "",
    ]


def render_disk(d: Disk) -> list[str]:
    endings = ", ".join(f"{name} {how}" for name, how in d.endings.items())
    left = d.left.describe() if d.left else "-"
    return [
        "## 8. A full disk",
        "",
        f"A server of its own on a {SIZE >> 20} MiB tmpfs state directory with"
        f" `--min-free-disk {FLOOR >> 20}M`. Its jobs: a ticker, a sleeper; the"
        f" soak fills the disk to {ROOM >> 20} MiB above the floor, then a job"
        f" floods its output: it kept {d.flood_bytes / 2**20:.1f} MiB. Both"
        f" writers ended on the floor: {endings} (truncated; the log names"
        f" min-free-disk {d.truncations_logged} times). {d.refusals} Starts"
        " (both users) were RESOURCE_EXHAUSTED naming min-free-disk. Then the"
        " disk was filled to its last byte behind the server's back and the"
        " sleeper stopped: its journal write met ENOSPC"
        f" ({d.journal_errors_logged} such errors logged), the server answered"
        f" Stop, List and the flood's whole log: {d.answered_when_full}. Space"
        f" freed, a new job ran: {d.started_after}. After a SIGTERM restart on"
        f" the same tmpfs, {d.same_after_restart} of {d.jobs} jobs came back"
        f" with the same status and output hash. Left behind: {left}."
        f" Lost: {len(d.lost)}.",
        "",
    ]
