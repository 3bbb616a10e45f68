"""The exec'd helper between the server and a job's command (stdlib only).

Run as `python -I -S helper.py job=ID -- ARGV...`, its configuration (a
`marshal`led dict, from the same interpreter) on fd 4, the status pipe on
fd 3; it must
not import jobworker, and imports only what loads fast: every job start
waits for this interpreter (no json, re, typing, socket or contextlib).
H (this process): dies with the server, new session, joins the job's
cgroups; without namespaces it is the job's init (a child subreaper), with
them it unshares PID, mount, network, IPC, UTS and cgroup namespaces and
forks I (PID 1 there), the init, which builds the job's private root (the
plan made by jobworker.isolation.rootfs) and pivots into it. The init forks
C, forwards SIGTERM and SIGINT to C's process group, kills everything on
SIGUSR2, reaps, and when C ends kills every leftover and reports C's wait
status. C: session, work dir, user, no_new_privs, default signals, the
syscall filter (a BPF program from jobworker.isolation.seccomp), exec. A
set-up failure writes "<kind> <detail>" to fd 3 and exits 127; EOF on fd 3
with no data means exec'd. H finally mirrors C's status (exit code or the
same signal) as its own.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import marshal
import os
import resource
import select
import struct
import sys

# os.execvpe imports it when it runs, after the switch to the job's user,
# who may not be able to read the standard library's directory.
import warnings  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any, NoReturn
else:  # `signal` without the enums it wraps it in, which load slowly
    import _signal as signal

STATUS_FD = 3
CONFIG_FD = 4
SETUP_FAILED = 127
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS = 0x20000, 0x2000000, 0x4000000
_CLONE_NEWIPC, _CLONE_NEWPID, _CLONE_NEWNET = 0x8000000, 0x20000000, 0x40000000
_NAMESPACES = _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC
_NAMESPACES |= _CLONE_NEWUTS | _CLONE_NEWCGROUP
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_MOVE = 32, 4096, 8192
_MS_REC, _MS_PRIVATE = 1 << 14, 1 << 18
_MNT_DETACH, _AT_FDCWD, _AT_RECURSIVE = 2, -100, 0x8000
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
_ROOT_DATA = b"mode=0755,size=1m,nr_inodes=4096"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
# posix_spawn leaves glibc's internal signals ignored; libc cannot reset them.
_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
_EXEC_ERRORS = {errno.ENOENT: "enoent", errno.ENOTDIR: "enoent"}
_EXEC_ERRORS |= {
    errno.EACCES: "eacces",
    errno.EPERM: "eacces",
    errno.ENOEXEC: "enoexec",
}
_FORWARDED = (signal.SIGTERM, signal.SIGINT)
_WATCHED = {*_FORWARDED, signal.SIGUSR2, signal.SIGCHLD}

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A set-up step failed; the message is the status line for the server."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SetupError(f"isolation {errno.errorcode.get(code, code)} {what}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl {option}")


def _report(message: str) -> NoReturn:
    """Tell the server why the start failed, then exit."""
    try:
        os.write(STATUS_FD, message.encode("utf-8", "replace")[:4000] + b"\n")
    finally:
        os._exit(SETUP_FAILED)


def _join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        try:
            with open(path, "w") as procs:
                procs.write(str(os.getpid()))
        except OSError as e:
            raise SetupError(f"isolation {e.strerror}: {path}") from None


def _encode(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(
    target: str,
    source: str | None,
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    result = _libc.mount(
        _encode(source), _encode(target), _encode(fstype), flags, _encode(data)
    )
    _check(result, f"mount {target}")


def _set_attributes(target: str, attributes: int) -> None:
    """Apply MOUNT_ATTR_* to a mount and all below it (or remount the top)."""
    attr = struct.pack("QQQQ", attributes, 0, 0, 0)
    path = os.fsencode(target)
    if _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, _AT_RECURSIVE, attr, 32):
        if ctypes.get_errno() != errno.ENOSYS:  # kernels before 5.12: top only
            _check(-1, f"mount_setattr {target}")
        _mount(target, None, None, _MS_REMOUNT | _MS_BIND | attributes)


def _bind(target: str, source: str, attributes: int) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    _mount(target, source, None, _MS_BIND | _MS_REC)
    _set_attributes(target, attributes)


def _build_root(rootfs: dict[str, Any]) -> None:
    """Mount the job's new root at the stage directory, following its plan."""
    stage = rootfs["stage"]
    _mount(
        stage, "jobworker-root", "tmpfs", _MS_NOSUID | _MS_NODEV, _ROOT_DATA.decode()
    )
    for kind, path, *args in rootfs["plan"]:
        target = stage + path
        try:
            if kind == "bind":
                _bind(target, args[0], args[1])
            elif kind == "mount":
                os.makedirs(target, exist_ok=True)
                _mount(target, *args)
            elif kind == "symlink":
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.symlink(args[0], target)
            elif kind == "seal":
                _mount(target, None, None, _MS_REMOUNT | _MS_BIND | args[0])
        except OSError as e:
            raise SetupError(f"isolation {e.strerror}: {kind} {path}") from None
    hostname = os.fsencode(rootfs["hostname"])
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")


def _enter_root(stage: str) -> None:
    """pivot_root into the stage and drop the host's root; seal it read-only.

    Where the host's root cannot be pivoted (an initramfs), move the stage
    over it and chroot, as switch_root does.
    """
    os.chdir(stage)
    if _SYS_PIVOT_ROOT and _libc.syscall(_SYS_PIVOT_ROOT, b".", b".") == 0:
        _check(_libc.umount2(b".", _MNT_DETACH), "detach the host's root")
    else:
        _mount("/", ".", None, _MS_MOVE)
        _check(_libc.chroot(b"."), "chroot")
    os.chdir("/")
    _mount(
        "/", None, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    )


def _loopback_up() -> None:
    import _socket  # noqa: PLC0415 - the C module; `socket` loads slowly

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        try:
            ifreq = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
            current = struct.unpack("16sH14x", ifreq)[1]
            fcntl.ioctl(
                sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", current | _IFF_UP)
            )
        except OSError as e:
            raise SetupError(f"isolation lo up: {e.strerror}") from None
    finally:
        sock.close()


def _setup_namespace(rootfs: dict[str, Any] | None) -> None:
    """In the new namespaces: private mounts, `lo` up, then either a new
    root (`rootfs`) or fresh /proc and /sys over the host's tree."""
    private = _MS_REC | _MS_PRIVATE
    _check(_libc.mount(b"none", b"/", None, private, None), "make / private")
    _loopback_up()
    if rootfs is not None:
        _build_root(rootfs)
        _enter_root(rootfs["stage"])
        return
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    _check(_libc.mount(b"proc", b"/proc", b"proc", flags, None), "mount /proc")
    # Best effort: a sysfs of the new network namespace (only `lo` in it).
    _libc.mount(b"sysfs", b"/sys", b"sysfs", flags, None)


def _install_seccomp(program: bytes) -> None:
    """Load a classic BPF seccomp program (compiled by the server)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buffer))
    _check(
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog, 0, 0),
        "install the syscall filter",
    )


def _exec_command(config: dict[str, Any], argv: list[bytes]) -> NoReturn:
    """C: become the job's command, or report why not."""
    try:
        os.setsid()
        try:
            os.chdir(config["workdir"])
        except OSError as e:
            raise SetupError(f"cwd {e.strerror}: {config['workdir']}") from None
        if config.get("uid") is not None:
            try:
                os.setgroups(config["groups"])
                os.setgid(config["gid"])
                os.setuid(config["uid"])
            except (OSError, ValueError, OverflowError) as e:
                raise SetupError(f"user {config.get('user')}: {e}") from None
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in range(1, signal.NSIG):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):  # KILL, STOP; 32, 33 glibc's own, ignored
                if _RT_SIGACTION and sig not in (signal.SIGKILL, signal.SIGSTOP):
                    _libc.syscall(_RT_SIGACTION, sig, bytes(32), None, 8)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if config.get("seccomp"):
            _install_seccomp(config["seccomp"])
        os.execvpe(argv[0], argv, config["env"])  # noqa: S606 - no shell on purpose
    except SetupError as e:
        _report(str(e))
    except OSError as e:
        _report(f"{_EXEC_ERRORS.get(e.errno or 0, 'exec')} {e.strerror}")
    except BaseException as e:  # anything must reach the server
        _report(f"error {e!r}")


def _descendants() -> list[int]:
    """Every process below this one, found through /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        kids = children.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def _kill_everything() -> None:
    """SIGKILL every other process of the job (all of the PID namespace)."""
    for pid in [-1] if os.getpid() == 1 else _descendants():
        _send(pid, signal.SIGKILL)


def _kill_and_reap_all(main: int, status: int) -> int:
    """Kill and reap every leftover; return the main process's status."""
    while True:
        _kill_everything()
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        if pid == main:
            status = wait_status


def _send(pid: int, sig: int) -> None:
    """`os.kill`, for a process that may be gone already."""
    try:  # noqa: SIM105 - contextlib is slow to import
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(leader: int, sig: int) -> None:
    """Signal the command's process group (or the command, before setsid),
    then SIGCONT it so that a stopped job gets the signal too."""
    for each in (sig, signal.SIGCONT):
        try:
            os.killpg(leader, each)
        except ProcessLookupError:
            _send(leader, each)


def _act_as_init(config: dict[str, Any], argv: list[bytes]) -> int:
    """Run C under this process as init; return C's wait status."""
    main = os.fork()
    if main == 0:
        _exec_command(config, argv)
    os.close(STATUS_FD)
    _close_stdin()
    status: int | None = None
    while status is None:
        sig = signal.sigwaitinfo(_WATCHED).si_signo
        if sig in _FORWARDED:
            _signal_group(main, sig)
        elif sig == signal.SIGUSR2:
            _kill_everything()
        try:
            while (reaped := os.waitpid(-1, os.WNOHANG))[0] != 0:
                if reaped[0] == main:
                    status = reaped[1]
        except ChildProcessError:
            pass
    return _kill_and_reap_all(main, status)


def _close_stdin() -> None:
    """Leave the job's stdin to the command: it sees EOF or EPIPE as it should."""
    try:  # noqa: SIM105 - contextlib is slow to import
        os.close(0)
    except OSError:
        pass


def _mirror(status: int) -> NoReturn:
    """Exit exactly as the command did: same exit code or same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:  # noqa: SIM105 - contextlib is slow to import
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL has no handler
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _namespace_init(
    config: dict[str, Any], argv: list[bytes], alive: int, report: int
) -> NoReturn:
    """I: PID 1 of the job's namespaces; reports C's status to H."""
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([alive], [], [], 0)[0]:
            os._exit(SETUP_FAILED)  # H is already gone
        _set_name(b"jw-init-", config.get("job_id", ""))
        _setup_namespace(config.get("rootfs"))
        for sig in (*_FORWARDED, signal.SIGUSR2):
            signal.signal(sig, lambda *_: None)  # a PID-ns init needs handlers
    except SetupError as e:
        _report(str(e))
    status = _act_as_init(config, argv)
    os.write(report, b"%d\n" % status)
    os._exit(0)


def _run_namespaced(
    config: dict[str, Any], argv: list[bytes], keeper: Any = None
) -> NoReturn:
    """H with namespaces: unshare, fork I, relay signals, mirror C's status.

    With a `keeper` (live restore) it serves the job's output and controls
    meanwhile.
    """
    # After joining the job's cgroup: the cgroup namespace's root is that.
    _check(_libc.unshare(_NAMESPACES), "unshare")
    alive_r, alive_w = os.pipe()
    report_r, report_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(alive_w)
        os.close(report_r)
        if keeper is not None:
            keeper.close_in_child()
        _namespace_init(config, argv, alive_r, report_w)
    os.close(STATUS_FD)
    _close_stdin()
    os.close(alive_r)
    os.close(report_w)
    if keeper is not None:
        _mirror(_keep_namespaced(keeper, init, report_r))
    while True:
        sig = signal.sigwaitinfo(_WATCHED).si_signo
        if sig in _FORWARDED or sig == signal.SIGUSR2:
            _send(init, signal.SIGKILL if sig == signal.SIGUSR2 else sig)
        pid, init_status = os.waitpid(init, os.WNOHANG)
        if pid == init:
            break
    reported = os.read(report_r, 64).strip()
    _mirror(int(reported) if reported else init_status)


def _keep_namespaced(keeper: Any, init: int, report_r: int) -> int:
    """H under live restore, with namespaces: the keeper's loop until I ends."""

    def reap() -> int | None:
        pid, init_status = os.waitpid(init, os.WNOHANG)
        if pid != init:
            return None
        reported = os.read(report_r, 64).strip()
        return int(reported) if reported else init_status

    keeper.after_fork(_WATCHED)
    return int(
        keeper.run(
            lambda sig: _send(init, sig), lambda: _send(init, signal.SIGKILL), reap
        )
    )


def _keep_as_init(keeper: Any, config: dict[str, Any], argv: list[bytes]) -> int:
    """H under live restore, without namespaces: init of C, and its keeper."""
    main = os.fork()
    if main == 0:
        keeper.close_in_child()
        _exec_command(config, argv)
    os.close(STATUS_FD)
    _close_stdin()
    ended: list[int] = []

    def reap() -> int | None:
        try:
            while not ended and (reaped := os.waitpid(-1, os.WNOHANG))[0] != 0:
                if reaped[0] == main:  # the leftovers go with it, as without
                    ended.append(_kill_and_reap_all(main, reaped[1]))
        except ChildProcessError:
            pass
        return ended[0] if ended else None

    keeper.after_fork(_WATCHED)
    return int(keeper.run(lambda sig: _signal_group(main, sig), _kill_everything, reap))


def _load_keeper(live: dict[str, Any]) -> Any:
    """The live-restore keeper (`keeper.py`, next to this file), started."""
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import keeper  # type: ignore[import-not-found]  # noqa: PLC0415 - live restore only

    return keeper.Keeper(live)


def _read_config() -> dict[str, Any]:
    """The configuration on fd `CONFIG_FD`, which is then closed."""
    chunks = []
    try:
        while chunk := os.read(CONFIG_FD, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(CONFIG_FD)
    # The server's own data, from the same interpreter (not a client's).
    config: dict[str, Any] = marshal.loads(b"".join(chunks))  # noqa: S302
    return config


def _set_name(prefix: bytes, job_id: str) -> None:
    """Name this process (comm, 15 bytes) after its job, for `ps` and `top`."""
    name = (prefix + job_id.encode("ascii", "replace"))[:15]
    _libc.prctl(_PR_SET_NAME, name, 0, 0, 0)


def main(args: list[str]) -> NoReturn:
    """Entry point: `helper.py job=ID -- ARGV...`, configuration on fd 4."""
    os.set_inheritable(STATUS_FD, False)
    try:
        config = _read_config()
        # The job's environment: for the command's exec only (launcher.JOB_ENV).
        job_env = os.environ.pop("JOBWORKER_JOB_ENV", "")
        config["env"] = marshal.loads(bytes.fromhex(job_env))  # noqa: S302
        argv = [os.fsencode(arg) for arg in args[2:]]
        _set_name(b"jw-", config.get("job_id", ""))
        live = config.get("live")
        if live is None:  # under live restore the job outlives the server
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the server
        if os.getppid() != config["parent"]:
            os._exit(SETUP_FAILED)  # the server is already gone
        os.setsid()
        _join_cgroups(config.get("cgroup_procs", []))
        signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        keeper = None if live is None else _load_keeper(live)
        if config.get("namespaces"):
            _run_namespaced(config, argv, keeper)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except SetupError as e:
        _report(str(e))
    except BaseException as e:  # anything must reach the server
        _report(f"error {e!r}")
    if keeper is not None:
        _mirror(_keep_as_init(keeper, config, argv))
    _mirror(_act_as_init(config, argv))


if __name__ == "__main__":
    main(sys.argv[1:])
