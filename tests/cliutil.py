"""End-to-end fixtures for the CLI tests: a real server, a PKI, the real CLI.

The server is built in-process exactly as `twistd jobworker` builds it
(`jobworker.server.tap.Options` + `build_service`), on 127.0.0.1 with a free port
with the run's PKI from `tests.pkiutil`. The CLI is the installed
`jobworker` console script, spawned through the reactor so the server keeps
serving while it runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from jobworker.address import format_address
from jobworker.isolation.cgroups import parent_name
from jobworker.isolation.cgroups.base import PARENT_PREFIX
from jobworker.server.tap import API_SERVICE, Options, build_service
from tests import pkiutil

BIN = os.path.dirname(sys.executable)
JOBWORKER = os.path.join(BIN, "jobworker")


@dataclass
class Result:
    """What a CLI run produced."""

    out: bytes
    err: bytes
    code: int


@dataclass
class Harness:
    """A running server and how to drive the CLI against it."""

    pki: str
    port: int
    service: Any
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def env(self, user: str = "alice", **overrides: str) -> dict[str, str]:
        """The environment the CLI gets: JOBWORKER_* for `user`, nothing else."""
        env = {
            "PATH": os.defpath,
            "LANG": "C.UTF-8",
            "JOBWORKER_SERVER": self.address,
            "JOBWORKER_CA": os.path.join(self.pki, "server-ca.pem"),
            "JOBWORKER_CERT": os.path.join(self.pki, f"{user}.pem"),
            "JOBWORKER_KEY": os.path.join(self.pki, f"{user}.key"),
        }
        env.update(overrides)
        return env

    def cli(
        self,
        *args: str | bytes,
        user: str = "alice",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes = b"",
    ) -> Deferred[Result]:
        """Run `jobworker ARGS...` as `user`; fires with its output and code.

        Its stdin is a pipe that gives `stdin`, then ends.
        """
        d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            JOBWORKER,
            list(args),
            env=dict(env or self.env(user)),
            path=cwd,
            stdinBytes=stdin,
        )
        return d.addCallback(lambda result: Result(*result))


def start_server(
    case: unittest.TestCase,
    pki: str,
    options: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> Harness:
    """Start the real service on a free port of `host`; stopped after the test."""
    state_dir = case.mktemp()
    config = Options()
    config.parseOptions(
        [
            "--listen",
            format_address(host, 0),
            "--tls-cert",
            os.path.join(pki, "server.pem"),
            "--tls-key",
            os.path.join(pki, "server.key"),
            "--client-ca",
            os.path.join(pki, "client-ca.pem"),
            "--state-dir",
            state_dir,
            "--stop-grace",
            "5",
            *options,
        ]
    )
    service = build_service(config)
    if "--no-isolation" not in options:
        case.addCleanup(remove_parent_cgroups, state_dir)
    service.startService()
    case.addCleanup(service.stopService)
    server = service.getServiceNamed(API_SERVICE)
    return Harness(pki=pki, port=server.port, service=service, host=host)


async def started_job(harness: Harness, *command: str, user: str = "alice") -> str:
    """Start a job through the CLI and return its id."""
    result = await harness.cli("start", "--", *command, user=user)
    if result.code != 0:
        raise AssertionError(f"start failed: {result.err!r}")
    return result.out.decode().strip()


class CLITestCase(unittest.TestCase):
    """The run's PKI (tests.pkiutil), one server (without isolation) per test."""

    server_options: tuple[str, ...] = ("--no-isolation",)

    def setUp(self) -> None:
        self.pki = pkiutil.pki_dir()
        self.harness: Harness = start_server(self, self.pki, self.server_options)

    async def status(self, job_id: str, user: str = "alice") -> dict[str, object]:
        result = await self.harness.cli("status", "--json", job_id, user=user)
        self.assertEqual(result.code, 0, result.err)
        value: dict[str, object] = json.loads(result.out)
        return value

    async def wait_for_output(self, job_id: str, size: int = 1) -> None:
        """Poll (no sleeping) until the job has written `size` bytes."""
        for _ in range(200):
            written = (await self.status(job_id))["output_bytes"]
            assert isinstance(written, int)
            if written >= size:
                return
        self.fail(f"job {job_id} wrote nothing")


def remove_parent_cgroups(state_dir: str) -> None:
    """Remove the (empty) parent cgroups a server of `state_dir` created.

    The drivers keep them for the server's next run; a test leaves none.
    """
    name = parent_name(state_dir)
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if name in dirs:
            os.rmdir(os.path.join(root, name))
        dirs[:] = [d for d in dirs if not d.startswith(PARENT_PREFIX)]
