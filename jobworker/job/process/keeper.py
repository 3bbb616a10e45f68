"""The helper's side of live restore: it keeps the job's output, exit and controls.

Stdlib only, loaded by `helper.py` (by path, `python -I -S`) under
`--live-restore` alone, so that a job outlives its server. The `Keeper`
reads the command's stdout and stderr from pipes of its own and appends
them to `output.log` in the server's record format (`records.py`, the same
file the server imports), within the per-job cap; past it, or when the
server said "drop" (its room ends where the output is), it closes the
pipes at the next output past it (the job's writes get EPIPE, as
`cmd | head`). It serves the control channel, a Unix stream socket in the
job's live directory (root's alone: the directory is 0700 and the socket
0600), to any number of servers in turn, and runs on with none connected.
When the command has ended and its output is drained, it writes the wait
status to the `exit` file (temporary file, fsync, rename, fsync of the
directory) and only then says "ended". The line protocol, version
`PROTOCOL` (doc/restart.md):

  helper to server: `hello 1 <pid>` (first), `size <log bytes>` (after the
  bytes are written, at most one per wake-up), `truncated <why>`,
  `ended <wait status>` (after the exit file is durable);
  server to helper: `stop` (SIGTERM to the job), `kill` (everything of it
  now), `drop <why>` (store no more output: quota, disk floor or the
  job's cap; output past it is truncated, as at the cap).
"""

from __future__ import annotations

import _socket
import fcntl
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING or __package__:  # a module of jobworker (the server's)
    from jobworker.job.process import records
else:  # loaded by the helper, by path: the log format, shared with the server
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import records
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from typing import Any
else:
    import _signal as signal

PROTOCOL = 1
SOCKET, PID_FILE, EXIT_FILE = "control.sock", "helper.pid", "exit"
_TEMP = ".tmp"
READ_BYTES = 1024 * 1024
PIPE_BYTES = 256 * 1024
DRAIN_SECONDS = 5.0  # output still open this long after the end is cut off
FLUSH_SECONDS = 1.0  # what a slow server gets to read "ended"
MAX_LINE = 1024
MAX_PENDING = 64 * 1024  # a server that reads nothing is dropped past this


def start_time(pid: int | str = "self") -> str:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[19].decode()


def short_path(dir_fd: int, name: str) -> str:
    """A path of `name` in the directory open as `dir_fd`, short at any depth."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def write_durably(dir_fd: int, name: str, text: str) -> None:
    """`name` in the directory `dir_fd` holds `text`, whole or not at all."""
    temp = name + _TEMP
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


class _Client:
    """One connected server: its socket and what is still to be sent to it."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.inbox = b""
        self.outbox = b""

    def fileno(self) -> int:
        return self.sock.fileno()


class Keeper:
    """The job's output, exit file and control channel, kept by its helper."""

    def __init__(self, live: dict[str, Any]) -> None:
        """Open the log, make the output pipes (as fds 1 and 2), bind the socket.

        `live` is the server's: "dir" (the live directory), "log" (the
        output log), "cap" (output bytes to keep).
        """
        self.dir_fd = os.open(str(live["dir"]), os.O_RDONLY | os.O_DIRECTORY)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        self.log_fd = os.open(str(live["log"]), flags)
        self.size = os.fstat(self.log_fd).st_size
        self.cap = int(live["cap"])
        self._cap_reason = "output-cap"  # or what the server's "drop" said
        self.data_bytes = 0
        self.truncated_by = ""
        self._mark = -1
        self._reported = -1
        self.pipes: dict[int, int] = {}  # read end -> stream (1 or 2)
        for stream in (records.STDOUT, records.STDERR):
            read_end, write_end = os.pipe()
            try:  # noqa: SIM105 - contextlib is slow to import
                fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass
            os.dup2(write_end, stream)
            os.close(write_end)
            self.pipes[read_end] = stream
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:  # noqa: SIM105 - contextlib is slow to import
            os.unlink(SOCKET, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        # A socket's path must be short (108 bytes): this one always is.
        self.listener.bind(short_path(self.dir_fd, SOCKET))
        os.chmod(SOCKET, 0o600, dir_fd=self.dir_fd)
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.clients: list[_Client] = []
        write_durably(self.dir_fd, PID_FILE, f"{os.getpid()} {start_time()}\n")

    def close_in_child(self) -> None:
        """In a forked child: hold none of the keeper's files."""
        for fd in (*self.pipes, self._wake_r, self._wake_w, self.log_fd, self.dir_fd):
            os.close(fd)
        self.listener.close()

    def after_fork(self, watched: set[int]) -> None:
        """In the helper after its child is forked: own fds 1 and 2 to
        /dev/null (so the pipes end with the job), signals to the loop."""
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        for sig in watched:
            signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)

    def run(
        self,
        terminate: Callable[[int], None],
        kill: Callable[[], None],
        reap: Callable[[], int | None],
    ) -> int:
        """Serve until the command has ended and its output is in; its status.

        `terminate(sig)` forwards SIGTERM or SIGINT, `kill()` kills the
        whole job, `reap()` returns the command's wait status once it ended.
        """
        self._terminate, self._kill = terminate, kill
        status = None
        deadline = None
        while True:
            if status is None:
                status = reap()
                if status is not None:
                    deadline = time.monotonic() + DRAIN_SECONDS
            if deadline is not None and (not self.pipes or time.monotonic() > deadline):
                break
            readers: list[Any] = [self._wake_r, *self.pipes, self.listener]
            readers += self.clients
            writers = [client for client in self.clients if client.outbox]
            timeout = (
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            ready, writable, _ = select.select(readers, writers, [], timeout)
            for each in ready:
                self._ready(each)
            for client in writable:
                self._send(client)
            if self.size != self._reported:
                self._reported = self.size
                self._broadcast(f"size {self.size}\n")
        assert status is not None
        self._end(status)
        return status

    def _ready(self, each: object) -> None:
        if each == self._wake_r:
            for sig in os.read(self._wake_r, 64):
                if sig in (signal.SIGTERM, signal.SIGINT):
                    self._terminate(sig)
                elif sig == signal.SIGUSR2:
                    self._kill()
        elif isinstance(each, int):
            if each in self.pipes:
                self._read_pipe(each)
        elif each is self.listener:
            self._accept()
        elif isinstance(each, _Client) and each in self.clients:
            self._receive(each)

    def _read_pipe(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os.close(fd)
            del self.pipes[fd]
            return
        self._store(self.pipes[fd], data)

    def _store(self, stream: int, data: bytes) -> None:
        """Append `data` within the cap; past it, or on a write error, stop."""
        room = self.cap - self.data_bytes
        over = len(data) > room
        data = data[: max(room, 0)]
        if data:
            parts, _, at, mark = records.frame(
                stream, data, self.size, self._mark, time.time_ns()
            )
            try:
                records.write_all(self.log_fd, parts)
            except OSError as error:
                self._cut_back()
                self._stop_storing(error.strerror or "write error")
                return
            self.size, self._mark = at, mark
            self.data_bytes += len(data)
        if over:
            self._stop_storing(self._cap_reason, last=stream)

    def _cut_back(self) -> None:
        try:  # noqa: SIM105 - contextlib is slow to import
            os.ftruncate(self.log_fd, self.size)
        except OSError:
            pass

    def _stop_storing(self, why: str, last: int | None = None) -> None:
        """Store nothing more: close the pipes, so that the job's writes fail.

        The pipe of the stream `last` (the one past the cap) is closed after
        the others: its writer may go on to write to another one (`head ...;
        echo done >&2`), which must have lost its reader by then.
        """
        if self.truncated_by:
            return
        self.truncated_by = why
        for fd in sorted(self.pipes, key=lambda fd: self.pipes[fd] == last):
            os.close(fd)
        self.pipes.clear()
        self._broadcast(f"truncated {why}\n")

    def _accept(self) -> None:
        try:
            fd, _ = self.listener._accept()  # type: ignore[attr-defined]  # _socket's
        except OSError:
            return
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        client = _Client(sock)
        self.clients.append(client)
        client.outbox = f"hello {PROTOCOL} {os.getpid()}\nsize {self.size}\n".encode()
        if self.truncated_by:
            client.outbox += f"truncated {self.truncated_by}\n".encode()

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbox += data
        while b"\n" in client.inbox:
            line, client.inbox = client.inbox.split(b"\n", 1)
            self._command(line.decode("ascii", "replace"))
        if len(client.inbox) > MAX_LINE:
            self._drop(client)

    def _command(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "stop":
            self._terminate(signal.SIGTERM)
        elif word == "kill":
            self._kill()
        elif word == "drop":
            self._room_ends(rest or "dropped")

    def _room_ends(self, why: str) -> None:
        """No more room, because of `why`: the next output is truncated.

        As the server's own log does at a cap, nothing is truncated while
        nothing more comes: a job that stops at exactly its room is whole.
        """
        if self.data_bytes < self.cap:
            self.cap, self._cap_reason = self.data_bytes, why

    def _broadcast(self, line: str) -> None:
        for client in list(self.clients):
            client.outbox += line.encode()
            self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(client)
            return
        client.outbox = client.outbox[sent:]
        if len(client.outbox) > MAX_PENDING:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
            client.sock.close()

    def _end(self, status: int) -> None:
        """The exit file, durably; then "ended" to whoever listens."""
        for fd in self.pipes:
            os.close(fd)
        self.pipes.clear()
        os.close(self.log_fd)
        why = self.truncated_by or "-"
        text = f"{PROTOCOL} {status} {self.size} {self.data_bytes} {why}\n"
        try:  # noqa: SIM105 - contextlib is slow to import
            write_durably(self.dir_fd, EXIT_FILE, text)
        except OSError:  # no exit file: the job's end is then unknown (LOST)
            pass
        self._broadcast(f"size {self.size}\nended {status}\n")
        deadline = time.monotonic() + FLUSH_SECONDS
        while any(client.outbox for client in self.clients):
            left = deadline - time.monotonic()
            writers = [client for client in self.clients if client.outbox]
            if left <= 0 or not select.select([], writers, [], left)[1]:
                break
            for client in writers:
                self._send(client)
        for client in list(self.clients):
            self._drop(client)
        self.listener.close()
