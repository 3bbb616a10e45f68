"""The job library: start, stop, query and read the output of jobs.

`manager.JobManager` is the facade. A `job.Job` holds one job's record,
state machine (`machine`), output log (`outputlog`) and clean-up; it
publishes its status to the `board`. `process/` starts and talks to the
exec'd helper; `dirs`, `users` and `environment` say where a job lives,
whom it runs as and what environment it gets; `events` is the hook the
manager tells job events to (the server's observer logs them).
"""
