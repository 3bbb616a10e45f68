"""The environment a job's command starts with: nothing comes from the server."""

from __future__ import annotations

JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def job_env(work_dir: str) -> dict[str, str]:
    """The fixed environment of a job: nothing comes from the server."""
    return {"PATH": JOB_PATH, "HOME": work_dir, "LANG": "C.UTF-8"}
