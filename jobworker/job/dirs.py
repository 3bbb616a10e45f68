"""Where a job lives on disk.

Layout: `<state_dir>/jobs` (mode 0711, so jobs cannot list each other's
ids), one `<job_id>` directory per job (0711) holding `output.log` (0600,
the server's), `job.json` (0600, its journal record: `jobworker.job.journal`)
and `work` (0700, owned by the job user): the job's working directory and
HOME, removed when the job ends.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from jobworker.errors import BadWorkingDirectory
from jobworker.job.users import JobUser


@dataclass(frozen=True)
class JobDirs:
    """The paths of one job."""

    job_dir: str
    work_dir: str
    output_path: str


def job_dirs(state_dir: str, job_id: str) -> JobDirs:
    """The paths of the job `job_id` below `state_dir` (nothing is created)."""
    job_dir = os.path.join(os.path.abspath(state_dir), "jobs", job_id)
    return JobDirs(
        job_dir, os.path.join(job_dir, "work"), os.path.join(job_dir, "output.log")
    )


def create_job_dirs(state_dir: str, job_id: str, user: JobUser | None) -> JobDirs:
    """Create a new job's directories; raise `BadWorkingDirectory` if we cannot."""
    dirs = job_dirs(state_dir, job_id)
    jobs, job_dir, work_dir = os.path.dirname(dirs.job_dir), dirs.job_dir, dirs.work_dir
    try:
        os.makedirs(jobs, mode=0o711, exist_ok=True)
        os.chmod(jobs, 0o711)  # noqa: S103 - traversable, not listable
        os.mkdir(job_dir, 0o711)
        os.chmod(job_dir, 0o711)  # noqa: S103 - traversable, not listable
        os.mkdir(work_dir, 0o700)
        if user is not None:
            os.chown(work_dir, user.uid, user.gid)
    except OSError as e:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise BadWorkingDirectory(
            f"cannot create the job's directory {job_dir}: {e.strerror}"
        ) from None
    return dirs


def remove_tree(path: str) -> None:
    """Remove a job's directory or work dir (symlink-attack safe on Linux)."""
    shutil.rmtree(path, ignore_errors=True)
