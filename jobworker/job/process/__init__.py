"""The process side of a job: spawning the helper (`launcher`), reading its
pipes in large pieces (`pipes`), the thin `ProcessProtocol` (`protocol`)
and the exec'd helper itself (`helper`, stdlib only, never imported).
"""
