"""Tests for jobworker.job.process.helper: the exec'd helper, run for real.

Each test spawns the helper the way the manager does (jobworker.job.process.launcher)
and checks what the job saw and how the helper ended.
"""

from __future__ import annotations

import marshal
import os
import signal
import subprocess
import sys
from dataclasses import replace
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial import unittest

from jobworker.job.environment import job_env
from jobworker.job.process.launcher import HELPER, LaunchSpec, config_file
from jobworker.job.process.protocol import CONFIG_FD
from jobworker.job.users import JobUser, resolve_user
from jobworker.model import Limits
from tests.procutil import (
    HelperRun,
    marker,
    processes_with,
    run_helper,
    until_stopped,
)
from tests.sandboxutil import default_sandbox

reactor: Any = _reactor


def need_root() -> None:
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root (namespaces, user switch)")


class HelperTests(unittest.TestCase):
    """The helper as a child subreaper, without namespaces (and the tests
    that `NamespacedHelperTests` runs again with namespaces)."""

    namespaces = False

    def spec(self, *command: bytes, **changes: Any) -> LaunchSpec:
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        base = LaunchSpec(
            tuple(command), work, job_env(work), namespaces=self.namespaces
        )
        return replace(base, **changes)

    async def run_spec(self, spec: LaunchSpec) -> HelperRun:
        run, _ = run_helper(reactor, spec)
        return await run.ended

    async def sh(self, script: bytes, *args: bytes) -> HelperRun:
        return await self.run_spec(self.spec(b"sh", b"-c", script, b"sh", *args))

    def test_helper_loads_no_slow_module(self) -> None:
        # Every job start waits for the helper's imports (doc/performance.md).
        # Run with no arguments, it imports everything, then fails to report.
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-X", "importtime", HELPER],
            capture_output=True,
            timeout=60,
            check=False,
        )
        loaded = {
            line.rpartition("|")[2].strip()
            for line in done.stderr.decode().splitlines()
            if line.startswith("import time:")
        }
        self.assertIn("ctypes", loaded)  # the list is real
        slow = {"json", "re", "typing", "contextlib", "socket", "enum", "jobworker"}
        self.assertEqual(loaded & slow, set())

    async def test_helper_is_spawned_without_fork(self) -> None:
        def no_fork() -> int:
            raise AssertionError("the server forked; grpcio does not allow it")

        self.patch(os, "fork", no_fork)
        run = await self.run_spec(self.spec(b"true"))
        self.assertEqual((run.report, run.exit_code), (b"", 0))

    async def test_exit_code_is_mirrored(self) -> None:
        run = await self.sh(b"echo out; echo err >&2; exit 7")
        self.assertEqual((run.report, run.exit_code, run.signal), (b"", 7, None))
        self.assertEqual((run.stdout, run.stderr), (b"out\n", b"err\n"))

    async def test_signal_death_is_mirrored_without_core(self) -> None:
        run = await self.sh(b"kill -SEGV $$")
        self.assertEqual(run.signal, signal.SIGSEGV)
        self.assertEqual(run.report, b"")

    async def test_arguments_pass_through_exactly(self) -> None:
        run = await self.sh(b'printf "%s|" "$@"', b"\xff\xfe", b"a b", b"", b"*")
        self.assertEqual(run.stdout, b"\xff\xfe|a b||*|")

    async def test_environment_is_clean(self) -> None:
        spec = self.spec(b"env")
        run = await self.run_spec(spec)
        self.assertEqual(
            sorted(run.stdout.splitlines()),
            sorted(f"{k}={v}".encode() for k, v in spec.env.items()),
        )

    async def test_the_helper_runs_without_the_jobs_environment(self) -> None:
        # The caller's variables (LD_PRELOAD...) must not reach the helper,
        # which runs as root until the command's exec: only the command.
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        env = job_env(work, {"CALLERS_VARIABLE": "x"})
        spec = replace(self.spec(b"sh"), env=env)
        script = b'echo "$CALLERS_VARIABLE"; tr "\\0" "\\n" < /proc/$PPID/environ'
        run = await self.run_spec(replace(spec, command=(b"sh", b"-c", script)))
        self.assertEqual(run.report, b"")
        first, *helpers = run.stdout.splitlines()
        self.assertEqual(first, b"x")
        self.assertIn(b"LANG=C.UTF-8", helpers)
        self.assertFalse([line for line in helpers if b"CALLERS" in line], helpers)

    def test_the_jobs_environment_is_not_on_the_helpers_command_line(self) -> None:
        # /proc/PID/cmdline is readable by everyone, the variables may be secrets.
        spec = replace(self.spec(b"true"), env={"TOKEN": "hunter2"})
        argv = b"\0".join(spec.helper_argv())
        self.assertNotIn(b"hunter2", argv)
        self.assertNotIn(b"hunter2".hex().encode(), argv)

    async def test_a_stdin_pipe_reaches_the_command_with_its_eof(self) -> None:
        spec = replace(self.spec(b"sh", b"-c", b"cat; echo end"), stdin=True)
        run, transport = run_helper(reactor, spec)
        transport.writeToChild(0, b"in\x00put\n")
        transport.closeChildFD(0)
        await run.ended
        self.assertEqual((run.stdout, run.exit_code), (b"in\x00put\nend\n", 0))

    async def test_the_command_alone_holds_its_stdin(self) -> None:
        # The helpers above it keep no copy, so the server's end sees the
        # command close it while it still runs (a writer gets EPIPE).
        script = b"exec 0<&-; echo closed; exec sleep 1000"
        run, transport = run_helper(
            reactor, replace(self.spec(b"sh", b"-c", script), stdin=True)
        )
        await run.until_printed(b"closed")
        await run.stdin_closed
        self.assertIsNone(run.exit_code)
        transport.signalProcess(signal.SIGUSR2)
        await run.ended

    async def test_working_directory_is_the_work_dir(self) -> None:
        spec = self.spec(b"pwd")
        run = await self.run_spec(spec)
        self.assertEqual(run.stdout.strip(), os.fsencode(spec.work_dir))

    async def test_signals_are_default_and_unblocked_and_no_new_privs(self) -> None:
        run = await self.run_spec(self.spec(b"cat", b"/proc/self/status"))
        lines = dict(
            line.split(b":\t", 1) for line in run.stdout.splitlines() if b":\t" in line
        )
        self.assertEqual(lines[b"SigBlk"].strip(), b"0" * 16)
        self.assertEqual(lines[b"SigIgn"].strip(), b"0" * 16)
        self.assertEqual(lines[b"NoNewPrivs"].strip(), b"1")

    async def test_missing_program_is_reported_as_enoent(self) -> None:
        run = await self.run_spec(self.spec(b"no-such-program-jw"))
        self.assertTrue(run.report.startswith(b"enoent "), run.report)
        self.assertEqual(run.exit_code, 127)

    async def test_non_executable_file_is_reported_as_eacces(self) -> None:
        spec = self.spec()  # the file in the work dir: a sandbox sees no other
        path = os.path.join(spec.work_dir, "script")
        with open(path, "w") as script:
            script.write("#!/bin/sh\n")
        run = await self.run_spec(replace(spec, command=(os.fsencode(path),)))
        self.assertTrue(run.report.startswith(b"eacces "), run.report)

    async def test_unknown_format_is_reported_as_enoexec(self) -> None:
        spec = self.spec()
        path = os.path.join(spec.work_dir, "binary")
        with open(path, "wb") as binary:
            binary.write(b"\x7fELF garbage")
        os.chmod(path, 0o755)
        run = await self.run_spec(replace(spec, command=(os.fsencode(path),)))
        self.assertTrue(run.report.startswith(b"enoexec "), run.report)

    async def test_bad_working_directory_is_reported_as_cwd(self) -> None:
        run = await self.run_spec(self.spec(b"true", work_dir="/nonexistent/jw"))
        self.assertTrue(run.report.startswith(b"cwd "), run.report)

    async def test_bad_user_is_reported_as_user(self) -> None:
        ghost = JobUser("ghost", -5, -5, ())
        run = await self.run_spec(self.spec(b"true", user=ghost))
        self.assertTrue(run.report.startswith(b"user ghost"), run.report)

    async def test_bad_cgroup_is_reported_as_isolation(self) -> None:
        spec = self.spec(b"true", cgroup_procs=("/nonexistent/cgroup.procs",))
        run = await self.run_spec(spec)
        self.assertTrue(run.report.startswith(b"isolation "), run.report)

    async def test_leftover_processes_die_when_the_command_exits(self) -> None:
        tag = marker()
        script = b'sleep %s & setsid sh -c "sleep %s & :" ; exit 0' % (
            tag.encode(),
            tag.encode(),
        )
        run = await self.sh(script)
        self.assertEqual(run.exit_code, 0)
        self.assertEqual(processes_with(tag), [])

    async def test_term_reaches_the_command(self) -> None:
        run, transport = run_helper(reactor, self.spec(b"sleep", marker().encode()))
        await run.started
        transport.signalProcess("TERM")
        await run.ended
        self.assertEqual(run.signal, signal.SIGTERM)

    async def test_term_reaches_a_stopped_command(self) -> None:
        tag = marker()
        spec = self.spec(b"sh", b"-c", b"kill -STOP $$; exit 0", tag.encode())
        run, transport = run_helper(reactor, spec)
        await run.started
        (command,) = processes_with(tag, helpers=False)
        await until_stopped(reactor, command)
        transport.signalProcess("TERM")
        await run.ended
        self.assertEqual(run.signal, signal.SIGTERM)

    async def test_usr2_kills_everything(self) -> None:
        tag = marker()
        script = b"trap '' TERM; sleep %s & echo ready; wait" % tag.encode()
        run, transport = run_helper(reactor, self.spec(b"sh", b"-c", script))
        await run.until_printed(b"ready")
        transport.signalProcess("TERM")
        transport.signalProcess(signal.SIGUSR2)
        await run.ended
        self.assertEqual(run.signal, signal.SIGKILL)
        self.assertEqual(processes_with(tag), [])

    async def test_job_runs_as_the_job_user(self) -> None:
        need_root()
        nobody = resolve_user("nobody")
        assert nobody is not None
        spec = self.spec(b"id", b"-u")
        os.chown(spec.work_dir, nobody.uid, nobody.gid)
        run = await self.run_spec(replace(spec, user=nobody))
        self.assertEqual(run.stdout.strip(), str(nobody.uid).encode())

    async def test_ps_shows_the_job_id_not_the_configuration(self) -> None:
        job_id = "0123456789abcdef-job"
        script = b'cat /proc/$PPID/comm; tr "\\0" " " </proc/$PPID/cmdline'
        spec = replace(self.spec(b"sh", b"-c", script), job_id=job_id)
        run = await self.run_spec(spec)
        self.assertEqual(run.exit_code, 0, run.stderr)
        comm, _, cmdline = run.stdout.decode().partition("\n")
        parent = "jw-init-0123456" if self.namespaces else "jw-0123456789ab"
        self.assertEqual(comm, parent)
        self.assertIn(f" job={job_id} -- sh -c ", cmdline)
        self.assertLess(len(cmdline), 400)  # no configuration on it

    async def test_helper_exits_when_its_parent_is_not_the_server(self) -> None:
        spec = self.spec(b"true")
        config = marshal.loads(spec.helper_config())
        fd = config_file(marshal.dumps(config | {"parent": 1}))
        self.addCleanup(os.close, fd)
        run = HelperRun()
        reactor.spawnProcess(
            run,
            sys.executable,
            spec.helper_argv(),
            env={},
            childFDs={1: "r", 2: "r", 3: "r", CONFIG_FD: fd},
        )
        await run.ended
        self.assertEqual((run.exit_code, run.stdout), (127, b""))


class NamespacedHelperTests(HelperTests):
    """The helper with new namespaces, the private root and the syscall filter."""

    namespaces = True

    def setUp(self) -> None:
        need_root()

    def spec(self, *command: bytes, **changes: Any) -> LaunchSpec:
        base = super().spec(*command)
        stage = os.path.abspath(self.mktemp())
        os.makedirs(stage)
        sandbox = default_sandbox(uid_per_job=False)
        options = sandbox.launch_options(stage, base.work_dir, None, Limits())
        return replace(base, **options, **changes)

    async def test_job_sees_only_its_own_processes(self) -> None:
        run = await self.run_spec(self.spec(b"ps", b"-e", b"-o", b"pid=,comm="))
        pids = [int(line.split()[0]) for line in run.stdout.splitlines()]
        self.assertEqual(sorted(pids), [1, 2], run.stdout)

    async def test_job_sysfs_shows_only_loopback(self) -> None:
        run = await self.run_spec(self.spec(b"ls", b"/sys/class/net"))
        self.assertEqual(run.stdout, b"lo\n")

    async def test_job_has_only_loopback_and_it_is_up(self) -> None:
        run = await self.run_spec(self.spec(b"ip", b"-o", b"link"))
        lines = run.stdout.splitlines()
        self.assertEqual(len(lines), 1, run.stdout)
        self.assertIn(b"lo:", lines[0])
        self.assertIn(b"UP", lines[0])

    async def test_mounts_do_not_leak_to_the_host(self) -> None:
        before = open("/proc/self/mountinfo").read()  # noqa: SIM115
        await self.sh(b"true")
        self.assertEqual(open("/proc/self/mountinfo").read(), before)  # noqa: SIM115

    def test_helper_file_is_stdlib_only(self) -> None:
        with open(HELPER) as source:
            self.assertNotIn(
                "jobworker",
                "".join(line for line in source if line.startswith(("import", "from"))),
            )
