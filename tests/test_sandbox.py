"""Issue 13's attacks, as tests: jobs of different users cannot see or touch
each other, nor the host, through files, IPC, sockets or the kernel.

Root only, real jobs through JobManager with the server's default sandbox
(the private root, a uid per job, the syscall filter); run again in the
cgroup v2 guest (tests.test_cgroup2_guest).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid

from jobworker.isolation.rootfs import host_layout
from jobworker.isolation.sandbox import Sandbox
from jobworker.isolation.uids import DEFAULT_RANGE
from jobworker.job.manager import JobManager
from jobworker.model import JobStatus, Limits
from tests.managerutil import until_output
from tests.sandboxutil import default_sandbox
from tests.test_isolation import IsolationTestCase, MiB, control_file

PRIVATE = ("/tmp", "/var/tmp", "/run", "/dev/shm")


def tag() -> str:
    return f"jobworker-probe-{uuid.uuid4().hex[:12]}"


class SandboxTestCase(IsolationTestCase):
    async def running(
        self, manager: JobManager, owner: str, script: str, limits: Limits | None = None
    ) -> JobStatus:
        """Start `script` for `owner`; return once it printed "ready"."""
        return await self.running_argv(
            manager, owner, [b"sh", b"-c", script.encode()], limits
        )

    async def running_argv(
        self,
        manager: JobManager,
        owner: str,
        argv: list[bytes],
        limits: Limits | None = None,
    ) -> JobStatus:
        status = await manager.start(owner, argv, limits)
        self.addCleanup(manager.stop, status.id, 0)
        await until_output(manager, status.id, b"ready")
        return status

    async def run_as(self, manager: JobManager, owner: str, script: str) -> bytes:
        status = await manager.start(owner, [b"sh", b"-c", script.encode()])
        _, output = await self.finish(manager, status)
        return output

    async def python(self, manager: JobManager, code: str) -> bytes:
        status = await manager.start("alice", [b"python3", b"-c", code.encode()])
        _, output = await self.finish(manager, status)
        return output


class PrivateRootTests(SandboxTestCase):
    async def test_carol_cannot_read_or_overwrite_bobs_private_files(self) -> None:
        manager = self.manager()
        name = tag()
        writes = "; ".join(f"echo s > {path}/{name}" for path in PRIVATE)
        await self.running(
            manager, "bob", f"umask 077; {writes}; echo ready; sleep 600"
        )
        reads = "; ".join(
            f"cat {path}/{name} || echo absent; echo x > {path}/{name}"
            for path in PRIVATE
        )
        output = await self.run_as(manager, "carol", reads)
        self.assertEqual(output.count(b"absent"), len(PRIVATE), output)
        self.assertNotIn(b"s\n", output.replace(b"E:", b""))
        for path in PRIVATE:
            self.assertFalse(os.path.exists(f"{path}/{name}"), f"{path} is shared")

    async def test_private_tmpfs_are_the_jobs_and_sized_by_its_memory(self) -> None:
        manager = self.manager()
        script = "id -u; stat -c '%u %a' " + " ".join(PRIVATE)
        script += "; df -k " + " ".join(PRIVATE)
        status = await manager.start(
            "alice", [b"sh", b"-c", script.encode()], Limits(memory_bytes=48 * MiB)
        )
        lines = (await self.finish(manager, status))[1].decode().splitlines()
        uid = lines[0]
        self.assertEqual(lines[1:5], [f"{uid} 700"] * len(PRIVATE))
        sizes = [line.split()[1] for line in lines[6:]]
        self.assertEqual(sizes, ["49152"] * len(PRIVATE), lines)

    async def test_dev_shm_pages_count_against_the_memory_limit(self) -> None:
        manager = self.manager()
        script = (
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 2>/dev/null;"
            " echo ready; sleep 600"
        )
        status = await self.running(
            manager, "bob", script, Limits(memory_bytes=96 * MiB)
        )
        cgroup = self.driver.created[status.id]
        name = "memory.usage_in_bytes" if self.driver.version == 1 else "memory.current"
        with open(control_file(cgroup, "memory", name)) as usage:
            self.assertGreaterEqual(int(usage.read()), 40 * MiB)
        await manager.stop(status.id, grace=0)

    async def test_filling_dev_shm_past_the_memory_limit_fails(self) -> None:
        manager = self.manager()
        script = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>&1; echo rc=$?"
        status = await manager.start(
            "alice", [b"sh", b"-c", script.encode()], Limits(memory_bytes=32 * MiB)
        )
        _, output = await self.finish(manager, status)
        self.assertNotIn(b"rc=0", output)
        self.assertNotIn(b"67108864 bytes", output)

    async def test_host_paths_outside_the_binds_are_absent(self) -> None:
        manager = self.manager()
        other = await self.running(manager, "carol", "echo ready; sleep 600")
        jobs = os.path.join(self.state_dir, "jobs")
        probes = ["/home", "/root", "/srv", "/opt", "/mnt", "/var/lib", "/var/log"]
        probes += [os.path.join(jobs, other.id), os.path.join(self.state_dir, "root")]
        script = "; ".join(f"test -e {p} && echo visible {p}" for p in probes)
        script += f"; ls -A {self.state_dir} {jobs}; ls ../output.log; pwd"
        status = await manager.start("bob", [b"sh", b"-c", script.encode()])
        _, output = await self.finish(manager, status)
        self.assertNotIn(b"visible", output)
        self.assertIn(f"{self.state_dir}:\njobs\n".encode(), output)
        self.assertIn(f"{jobs}:\n{status.id}\n".encode(), output)
        self.assertIn(b"ls: cannot access '../output.log'", output.replace(b"E:", b""))

    async def test_root_and_system_dirs_are_read_only_even_for_root(self) -> None:
        manager = self.manager(job_user="root")
        script = "for d in / /usr /etc /dev; do touch $d/jw-probe 2>&1; done"
        output = await self.run_as(manager, "alice", script)
        self.assertEqual(output.count(b"Read-only file system"), 4, output)
        for directory in ("/", "/usr", "/etc", "/dev"):
            self.assertFalse(os.path.exists(os.path.join(directory, "jw-probe")))

    async def test_dev_holds_only_the_minimal_devices(self) -> None:
        manager = self.manager()
        output = await self.run_as(manager, "alice", "ls /dev; echo x > /dev/null")
        self.assertEqual(
            sorted(output.split()),
            sorted(
                b"fd full null ptmx pts random shm stderr stdin stdout tty urandom"
                b" zero".split()
            ),
        )

    async def test_a_host_unix_socket_is_unreachable(self) -> None:
        directory = tempfile.mkdtemp(prefix="jobworker-socket-", dir="/tmp")
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "open.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        self.addCleanup(os.unlink, path)
        self.addCleanup(server.close)
        os.chmod(directory, 0o755)
        os.chmod(path, 0o666)
        server.listen()
        server.setblocking(False)
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({path!r})\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
        )
        output = await self.python(self.manager(), code)
        self.assertIn(b"refused 2", output)  # ENOENT: the path is not there
        self.assertRaises(BlockingIOError, server.accept)

    async def test_bind_ro_paths_are_visible_and_read_only(self) -> None:
        shared = tempfile.mkdtemp(prefix="jobworker-shared-", dir="/var/tmp")
        self.addCleanup(os.rmdir, shared)
        with open(os.path.join(shared, "data"), "w") as data:
            data.write("shared\n")
        self.addCleanup(os.unlink, os.path.join(shared, "data"))
        os.chmod(shared, 0o755)
        os.chmod(os.path.join(shared, "data"), 0o644)
        base = default_sandbox(uid_per_job=False)
        sandbox = Sandbox(host_layout([shared]), base.seccomp, None)
        manager = self.manager(job_user="root", sandbox=sandbox)
        output = await self.run_as(
            manager, "alice", f"cat {shared}/data; touch {shared}/new 2>&1"
        )
        self.assertIn(b"shared\n", output)
        self.assertIn(b"Read-only file system", output)
        self.assertFalse(os.path.exists(os.path.join(shared, "new")))


class NamespaceTests(SandboxTestCase):
    async def test_ipc_objects_are_private_to_the_job(self) -> None:
        key = 0x6A770000 + uuid.uuid4().int % 0xFFFF
        code = (
            "import ctypes, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"print('id', libc.shmget({key}, 4096, 0o1600))\n"
            "sys.stdout.flush()\n"
            "print('ready', flush=True)\n"
            "import time; time.sleep(600)\n"
        )
        manager = self.manager()
        await self.running_argv(manager, "bob", [b"python3", b"-c", code.encode()])
        with open("/proc/sysvipc/shm") as host:
            self.assertNotIn(f" {key} ", host.read())
        output = await self.run_as(manager, "carol", "cat /proc/sysvipc/shm")
        self.assertNotIn(f" {key} ".encode(), output)
        self.assertEqual(len(output.splitlines()), 1, output)  # the header only

    async def test_hostname_is_the_jobs_own(self) -> None:
        output = await self.run_as(self.manager(), "alice", "hostname")
        self.assertEqual(output, b"jobworker\n")
        self.assertNotEqual(socket.gethostname(), "jobworker")

    async def test_proc_self_cgroup_shows_the_root(self) -> None:
        output = await self.run_as(self.manager(), "alice", "cat /proc/self/cgroup")
        lines = output.decode().splitlines()
        self.assertTrue(lines, output)
        for line in lines:
            self.assertTrue(line.endswith(":/"), output)


class UidTests(SandboxTestCase):
    async def test_concurrent_jobs_of_different_users_have_different_uids(
        self,
    ) -> None:
        manager = self.manager()
        bob = await self.running(manager, "bob", "id -u; id -g; echo ready; sleep 600")
        carol = await self.running(manager, "carol", "id -u; echo ready; sleep 600")
        bob_ids = await until_first_lines(manager, bob, 2)
        carol_uid = (await until_first_lines(manager, carol, 1))[0]
        self.assertEqual(bob_ids[0], bob_ids[1])  # the gid is the uid
        self.assertNotEqual(bob_ids[0], carol_uid)
        for uid in (bob_ids[0], carol_uid):
            self.assertTrue(DEFAULT_RANGE[0] <= uid <= DEFAULT_RANGE[1], uid)
        work = manager._job(bob.id).dirs.work_dir
        info = os.stat(work)
        self.assertEqual((info.st_uid, info.st_mode & 0o777), (bob_ids[0], 0o700))

    async def test_per_uid_kernel_limits_are_not_shared(self) -> None:
        code = (
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "count = 0\n"
            "while libc.inotify_init() >= 0:\n"
            "    count += 1\n"
            "print('took', count, 'ready', flush=True)\n"
            "import time; time.sleep(600)\n"
        )
        manager = self.manager()
        await self.running_argv(manager, "bob", [b"python3", b"-c", code.encode()])
        check = "import ctypes; print(ctypes.CDLL(None).inotify_init() >= 0)"
        self.assertEqual(await self.python(manager, check), b"True\n")

    async def test_a_uid_is_free_again_only_once_its_job_is_gone(self) -> None:
        manager = self.manager()
        assert self.sandbox.uids is not None
        status = await self.running(manager, "bob", "echo ready; sleep 600")
        self.assertEqual(len(self.sandbox.uids.in_use), 1)
        await manager.stop(status.id, grace=0)
        self.assertEqual(self.sandbox.uids.in_use, frozenset())


async def until_first_lines(
    manager: JobManager, status: JobStatus, count: int
) -> list[int]:
    chunks = await manager.read(status.id, 0)
    text = b"".join(chunk.data for chunk in chunks).decode()
    return [int(line) for line in text.splitlines()[:count]]


SYSCALLS = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    result = getattr(libc, name)(*args)
    print(name, errno.errorcode.get(ctypes.get_errno(), 0) if result == -1 else 'ok')
call('unshare', 0x10000000)
call('unshare', 0x00020000)
call('setns', os.open('/proc/self/ns/net', os.O_RDONLY), 0)
call('mount', b'none', b'/tmp', b'tmpfs', 0, None)
call('umount2', b'/tmp', 0)
call('syscall', {keyctl}, 0, 0, 0, 0, 0)
call('syscall', {bpf}, 0, 0, 0)
call('ptrace', 0, 0, 0, 0)
call('personality', 0x0040000)
print('query', libc.personality(0xffffffff) != -1)
pid = os.fork()
if pid == 0:
    os._exit(0)
print('fork', os.waitpid(pid, 0)[1])
"""


class SyscallFilterTests(SandboxTestCase):
    async def test_namespaces_mounts_keys_bpf_ptrace_fail_with_eperm_even_for_root(
        self,
    ) -> None:
        numbers = {"x86_64": (250, 321), "aarch64": (219, 280)}[os.uname().machine]
        code = SYSCALLS.format(keyctl=numbers[0], bpf=numbers[1])
        manager = self.manager(job_user="root")
        output = await self.python(manager, code)
        for name in ("unshare", "setns", "mount", "umount2", "syscall", "ptrace"):
            self.assertIn(f"{name} EPERM".encode(), output)
        self.assertNotIn(b" ok", output)
        self.assertIn(b"query True\nfork 0\n", output)

    async def test_unshare_user_namespace_fails_with_eperm(self) -> None:
        output = await self.run_as(self.manager(), "alice", "unshare -Ur true 2>&1")
        self.assertIn(b"Operation not permitted", output)

    async def test_threads_and_subprocesses_still_work(self) -> None:
        code = (
            "import subprocess, threading\n"
            "t = threading.Thread(target=print, args=('thread',))\n"
            "t.start(); t.join()\n"
            "print(subprocess.run(['sh', '-c', 'echo child'], capture_output=True)"
            ".stdout.decode(), end='')\n"
        )
        self.assertEqual(await self.python(self.manager(), code), b"thread\nchild\n")
