"""Isolation of jobs from each other and from the host.

`interfaces` is the contract the job manager sees; `cgroups/` implements it
on cgroup v1 and v2; `blockdev` and `mountinfo` find the disks IO limits
apply to. Namespaces are set up by the exec'd helper
(`jobworker.job.process.helper`).
"""
