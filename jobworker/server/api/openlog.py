"""A StreamOutput's reader of its job's log, opened on the reactor thread.

The log is opened in the reactor step that names it (`output_source`), so
a removal of the job (`JobManager.remove`, another step) comes wholly
before it (the stream is NOT_FOUND) or wholly after it (the open file is
read to its end: the job had ended, its output is complete). Opened by the
reactor, closed by the stream's thread: an open that comes after the stream
has given up is not made, so no file is left open.
"""

from __future__ import annotations

import threading

from jobworker.job.manager import JobManager
from jobworker.job.outputlog import LogReader, OutputSource
from jobworker.server.api.errors import ClientGone


class OpenLog:
    """The log of `job_id`, once `open` (reactor) ran; `close` on any thread."""

    def __init__(self, manager: JobManager, job_id: str) -> None:
        self._manager = manager
        self._job_id = job_id
        self._lock = threading.Lock()
        self._reader: LogReader | None = None
        self._closed = False

    @property
    def reader(self) -> LogReader:
        """The reader `open` made."""
        if self._reader is None:
            raise RuntimeError("the log is not open")
        return self._reader

    def open(self) -> OutputSource:
        """Open the job's log (reactor thread): its source, with its state then."""
        source = self._manager.output_source(self._job_id)
        with self._lock:
            if self._closed:
                raise ClientGone("the call ended before the log was opened")
            self._reader = LogReader(source.path, source.index)
        return source

    def close(self) -> None:
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
