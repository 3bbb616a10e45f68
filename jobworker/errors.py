"""The exceptions jobworker raises.

A message that names a client-supplied value shows it cut and escaped
(`jobworker.untrusted.shown`): it ends up in a reply and in the log.

Each is raised where the fault is known and translated once at each boundary:
library -> gRPC status (`jobworker.server.api.errors`) -> CLI message.
"""

from jobworker.untrusted import shown


class JobWorkerError(Exception):
    """Base class of every error jobworker raises on purpose."""


class InvalidRequest(JobWorkerError):
    """The request is malformed: empty command, NUL byte, bad limit or offset."""


class JobNotFound(JobWorkerError):
    """No job with this id (or not one the caller may see)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job '{shown(str(job_id))}' not found")
        self.job_id = job_id


class StartFailed(JobWorkerError):
    """The job could not be started; nothing of it is left behind."""


class ExecutableNotFound(StartFailed):
    """The program is not found in the job's PATH."""


class NotExecutable(StartFailed):
    """The program exists but cannot be executed (permissions, format)."""


class BadWorkingDirectory(StartFailed):
    """The job's working directory cannot be entered."""


class BadUser(StartFailed):
    """The user the job should run as does not exist or cannot be switched to."""


class IsolationFailed(StartFailed):
    """Cgroup or namespace set-up for the job failed."""


class JobNotEnded(JobWorkerError):
    """The job is still running (or stopping): it cannot be removed yet."""


class TooManyJobs(JobWorkerError):
    """A cap is reached: running jobs per user, followers, a quota.

    Retrying at once will not help; the message names the cap.
    """


class StorageExhausted(TooManyJobs):
    """No room for more output: the owner's output quota, or the disk's floor."""


class JobUidsExhausted(TooManyJobs):
    """Every uid of the job uid range is taken by a job that runs (or whose
    cgroup is not gone yet): no job of any user can start until one ends."""


class ServerBusy(TooManyJobs):
    """No turn for the call right now; the same call may well succeed shortly.

    Clients retry it (with backoff); it is raised before anything was done.
    """


class ShuttingDown(JobWorkerError):
    """The manager is shutting down and accepts no new jobs."""


class IsolationUnavailable(JobWorkerError):
    """The kernel lacks what isolation needs; raised at server start-up."""


class InputClosed(JobWorkerError):
    """The job's stdin is closed, taken by another call, or was never open."""


class InputTooLarge(JobWorkerError):
    """More input than the server takes for one job."""
