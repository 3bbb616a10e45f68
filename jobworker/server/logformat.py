"""The server's log format: twistd's text lines, or one JSON event per line.

`--log-format json` names `json_observer` as twistd's `--logger`: Twisted's
JSON observer (`jsonFileLogObserver`) on stdout, without the record
separator, so the output is JSON Lines. Each line is one event: its format
string, its fields (`job_id`, `caller`, `outcome`, ...) and Twisted's own
(`log_time`, `log_level`, `log_namespace`), readable back with
`twisted.logger.eventFromJSON`. It needs `--nodaemon` and no `--logfile`
(twistd names a log observer factory, which takes no arguments): journald,
a container runtime or a pipe takes the lines from there.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import ILogObserver, jsonFileLogObserver

LOG_FORMATS = ("text", "json")
JSON_OBSERVER = f"{__name__}.json_observer"


def json_observer() -> ILogObserver:
    """The JSON observer on stdout: one event per line."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


def json_logger_problem(twistd: dict[str, Any]) -> str | None:
    """Why twistd's options cannot log JSON, or None when they can."""
    if twistd.get("syslog"):
        return "--log-format json cannot go to --syslog"
    if not twistd.get("nodaemon"):
        return "--log-format json writes to stdout: run twistd with --nodaemon"
    if twistd.get("logfile") not in (None, "", "-"):
        return "--log-format json writes to stdout: leave out twistd's --logfile"
    return None
