"""The CLI's side of the API: an mTLS gRPC channel and one-line errors.

`ClientConfig.resolve` takes flags and environment variables (flags win);
`Client` makes the calls and turns every `grpc.RpcError` into a
`ClientError` whose message a user can act on: server down, untrusted server
certificate, name mismatch, client certificate refused, job not found...

A "server busy" refusal (`RESOURCE_EXHAUSTED`) is retried with backoff by
grpc itself, from the channel's service config (`RETRY_POLICY`); the server
marks the refusals that must not be retried (a cap that stays reached) with
a negative retry pushback. Only refusals are retried: the server answers
`RESOURCE_EXHAUSTED` before it has done anything, so a retried Start cannot
start a job twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from jobworker import defaults
from jobworker.address import InvalidAddress, parse_address
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc

# Jobs per List call (the server may cap it, and ends pages early by size).
LIST_PAGE_SIZE = 1000
# Every JobWorker call retries "busy" refusals: up to 5 attempts (grpc's
# most), waiting a random time below 1, 2, 4 then 8 s between them.
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "1s",
    "maxBackoff": "8s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
}
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "jobworker.v1.JobWorker"}],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
)
_ENV = {
    "server": "JOBWORKER_SERVER",
    "ca": "JOBWORKER_CA",
    "cert": "JOBWORKER_CERT",
    "key": "JOBWORKER_KEY",
}


class ClientError(Exception):
    """A request failed; the message is the one line the CLI prints."""

    exit_code = 1


class ConfigError(ClientError):
    """The CLI is missing a setting or cannot read a file it was given."""

    exit_code = 2


class JobNotFoundError(ClientError):
    """The server knows no such job (or none the caller may see)."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and the TLS files to reach it with."""

    server: str
    ca: str
    cert: str
    key: str
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each setting came from: its flag ("--ca") or variable."""

    def source(self, name: str) -> str:
        """The flag or environment variable that gave setting `name`."""
        return self.sources.get(name, f"--{name}")

    @classmethod
    def resolve(
        cls,
        flags: Mapping[str, str | None],
        environ: Mapping[str, str],
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
    ) -> ClientConfig:
        """Each setting from its flag, else its environment variable."""
        values: dict[str, str | None] = {}
        sources: dict[str, str] = {}
        for name, variable in _ENV.items():
            values[name] = flags.get(name) or environ.get(variable) or None
            from_flag = bool(flags.get(name)) or not environ.get(variable)
            sources[name] = f"--{name}" if from_flag else variable
        server = values["server"] or defaults.LISTEN
        try:
            parse_address(server)
        except InvalidAddress as error:
            shown = sources["server"]
            if shown != "--server":
                shown = f"{shown}={server}"
            raise ConfigError(f"{shown}: {error}") from None
        for name in ("ca", "cert", "key"):
            if values[name] is None:
                raise ConfigError(
                    f"no --{name} given and {_ENV[name]} is not set"
                    " (see jobworker --help)"
                )
        return cls(
            server=server,
            ca=str(values["ca"]),
            cert=str(values["cert"]),
            key=str(values["key"]),
            connect_timeout=connect_timeout,
            sources=sources,
        )


def _read(config: ClientConfig, name: str) -> bytes:
    """A TLS file's bytes; the error names where its path came from."""
    path: str = getattr(config, name)
    source = config.source(name)
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        where = (
            f"{source} file {path}" if source.startswith("--") else f"{source}={path}"
        )
        if not os.path.isabs(path):
            where += f" (relative to {os.getcwd()})"
        raise ConfigError(f"cannot read {where}: {error.strerror}") from None


def open_channel(config: ClientConfig) -> grpc.Channel:
    """A secure channel whose connection attempts give up after the timeout."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(config, "ca"),
        private_key=_read(config, "key"),
        certificate_chain=_read(config, "cert"),
    )
    timeout_ms = max(1, int(config.connect_timeout * 1000))
    # grpc-core uses the minimum reconnect backoff as its connect deadline
    # (TCP and TLS handshake); the other two keep retries at that pace.
    options = [
        ("grpc.min_reconnect_backoff_ms", timeout_ms),
        ("grpc.initial_reconnect_backoff_ms", timeout_ms),
        ("grpc.max_reconnect_backoff_ms", timeout_ms),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
    ]
    return grpc.secure_channel(config.server, credentials, options=options)


def list_all(
    stub: pb_grpc.JobWorkerStub,
    timeout: float | None = None,
    *,
    states: Sequence[pb.JobState.ValueType] = (),
    owner: str = "",
) -> list[pb.JobStatus]:
    """Every job the caller may see, oldest first: List, page after page.

    Only those in `states` and of `owner` when given. `timeout` bounds each
    call; a failed call raises its `grpc.RpcError`.
    """
    jobs: list[pb.JobStatus] = []
    token = ""
    while True:
        request = pb.ListRequest(
            page_size=LIST_PAGE_SIZE, page_token=token, states=states, owner=owner
        )
        response = stub.List(request, timeout=timeout)
        jobs.extend(response.jobs)
        if not response.next_page_token:
            return jobs
        if response.next_page_token == token or not response.jobs:
            raise ClientError("the server sent the same List page again")
        token = response.next_page_token


class Client:
    """The jobworker API over one channel; every failure is a `ClientError`."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channel = open_channel(config)
        self._stub = pb_grpc.JobWorkerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def start(
        self,
        command: Sequence[bytes],
        limits: pb.Limits,
        env: Mapping[str, str] | None = None,
        *,
        stdin: bool = False,
        request_id: str | None = None,
    ) -> pb.JobStatus:
        request = pb.StartRequest(
            command=list(command),
            limits=limits,
            env=env,
            stdin=stdin,
            request_id=request_id or "",
        )
        began = time.monotonic()
        try:
            return self._stub.Start(request).job
        except grpc.RpcError as error:
            raise self.error(error, began) from None

    def write_input(
        self, job_id: str, pieces: Iterator[bytes]
    ) -> pb.WriteInputResponse:
        """Send `pieces` as the job's stdin; their end is its EOF."""

        def requests() -> Iterator[pb.InputChunk]:
            yield pb.InputChunk(job_id=job_id)
            for data in pieces:
                yield pb.InputChunk(data=data)

        began = time.monotonic()
        try:
            return self._stub.WriteInput(requests())
        except grpc.RpcError as error:
            raise self.error(error, began, job_id) from None

    def stop(self, job_id: str, grace: float | None) -> pb.JobStatus:
        request = pb.StopRequest(job_id=job_id, grace_seconds=grace)
        began = time.monotonic()
        try:
            return self._stub.Stop(request).job
        except grpc.RpcError as error:
            raise self.error(error, began, job_id) from None

    def stop_all(
        self, job_ids: Sequence[str], grace: float | None
    ) -> list[pb.JobStatus | ClientError]:
        """Stop every job at once; each one's final status or error, in order."""
        requests = [pb.StopRequest(job_id=i, grace_seconds=grace) for i in job_ids]
        return self._at_once(self._stub.Stop, requests)

    def wait_all(self, job_ids: Sequence[str]) -> list[pb.JobStatus | ClientError]:
        """Wait for every job to end; each one's final status or error, in order."""
        requests = [pb.WaitRequest(job_id=job_id) for job_id in job_ids]
        return self._at_once(self._stub.Wait, requests)

    def _at_once(
        self, method: Any, requests: Sequence[Any]
    ) -> list[pb.JobStatus | ClientError]:
        """Make one call per request at once; each reply's `job`, or its error.

        Every call still open when this returns (Ctrl-C) is cancelled.
        """
        began = time.monotonic()
        calls = [method.future(request) for request in requests]
        results: list[pb.JobStatus | ClientError] = []
        try:
            for request, call in zip(requests, calls, strict=True):
                try:
                    results.append(call.result().job)
                except grpc.RpcError as error:
                    results.append(self.error(error, began, request.job_id))
        finally:
            for call in calls:
                call.cancel()
        return results

    def remove(self, job_id: str) -> pb.JobStatus:
        """Remove an ended job; its last status."""
        began = time.monotonic()
        try:
            return self._stub.Remove(pb.RemoveRequest(job_id=job_id)).job
        except grpc.RpcError as error:
            raise self.error(error, began, job_id) from None

    def status(self, job_id: str) -> pb.JobStatus:
        began = time.monotonic()
        try:
            return self._stub.Status(pb.StatusRequest(job_id=job_id)).job
        except grpc.RpcError as error:
            raise self.error(error, began, job_id) from None

    def get_limits(self) -> pb.GetLimitsResponse:
        """The server's defaults, maximums and minimums of the job limits."""
        began = time.monotonic()
        try:
            return self._stub.GetLimits(pb.GetLimitsRequest())
        except grpc.RpcError as error:
            raise self.error(error, began) from None

    def list(
        self, states: Sequence[pb.JobState.ValueType] = (), owner: str = ""
    ) -> list[pb.JobStatus]:
        """Every job the caller may see, oldest first: all pages of List."""
        began = time.monotonic()
        try:
            return list_all(self._stub, states=states, owner=owner)
        except grpc.RpcError as error:
            raise self.error(error, began) from None

    def output(
        self,
        job_id: str,
        offset: int = 0,
        *,
        tail: int | None = None,
        since: float | None = None,
        timestamps: bool = False,
        follow: bool = True,
    ) -> Iterator[pb.OutputChunk]:
        """The job's output from `offset` until it has ended; cancelled on close.

        Only its last `tail` lines and what the server read at `since` or
        later; without `follow`, only the output there is now.
        """
        request = pb.StreamOutputRequest(
            job_id=job_id,
            offset=offset,
            tail_lines=tail,
            timestamps=timestamps,
            no_follow=not follow,
        )
        if since is not None:
            request.since.FromNanoseconds(max(0, round(since * 1e9)))
        began = time.monotonic()
        call = self._stub.StreamOutput(request)
        try:
            yield from call
        except grpc.RpcError as error:
            raise self.error(error, began, job_id) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def error(
        self, error: grpc.RpcError, began: float, job_id: str | None = None
    ) -> ClientError:
        """The one-line `ClientError` for a failed call."""
        timed_out = time.monotonic() - began >= self._config.connect_timeout * 0.9
        message = describe(error, self._config, job_id, timed_out=timed_out)
        code_of = getattr(error, "code", None)
        if job_id and callable(code_of) and code_of() == grpc.StatusCode.NOT_FOUND:
            return JobNotFoundError(message)
        return ClientError(message)


_TEMPLATES = {
    grpc.StatusCode.NOT_FOUND: "job {job_id} not found",
    grpc.StatusCode.PERMISSION_DENIED: "permission denied: {details}",
    grpc.StatusCode.UNAUTHENTICATED: "not authenticated by {server}: {details}",
    grpc.StatusCode.DEADLINE_EXCEEDED: "{server} did not answer in time",
    grpc.StatusCode.UNAVAILABLE: "server {server} unavailable: {details}",
    grpc.StatusCode.INTERNAL: "server error: {details}",
    grpc.StatusCode.CANCELLED: "request cancelled: {details}",
}


def describe(
    error: grpc.RpcError,
    config: ClientConfig,
    job_id: str | None = None,
    *,
    timed_out: bool = False,
) -> str:
    """Say what went wrong with a call in words a user can act on."""
    code_of, details_of = getattr(error, "code", None), getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = (details_of() if callable(details_of) else None) or ""
    connecting = ("failed to connect", "errors resolving")
    if code == grpc.StatusCode.UNAVAILABLE and any(x in details for x in connecting):
        return _connect_failure(details, config, timed_out=timed_out)
    template = _TEMPLATES.get(code) if code is not None else None
    if template is None or (code == grpc.StatusCode.NOT_FOUND and not job_id):
        # INVALID_ARGUMENT, FAILED_PRECONDITION, RESOURCE_EXHAUSTED (a cap or
        # "server busy", the server says which): the server's words say it.
        return details or f"request failed ({getattr(code, 'name', 'unknown error')})"
    return template.format(
        job_id=job_id, server=config.server, details=details or "no details"
    )


# What grpc-core says when a connection fails, and what it means to a user.
_CONNECT_FAILURES = (
    (
        ("certificate_verify_failed",),
        "untrusted server certificate from {server}: it is not signed by the CA"
        " in {ca}",
    ),
    (
        ("hostname verification", "peer name", "not in peer certificate"),
        "server certificate name mismatch: the certificate of {server} is not"
        " valid for {host}",
    ),
    (
        ("failed to create security handshaker", "invalid private key"),
        "cannot use the client certificate {cert} with the key {key}"
        " (is it the key of this certificate?)",
    ),
    (
        ("socket closed", "unknown_ca", "bad_certificate", "certificate_required"),
        "the server {server} refused the client certificate {cert}"
        " (is it signed by the server's client CA, and still valid?)",
    ),
    (
        ("errors resolving", "domain name not found"),
        "cannot connect to {server}: host name {host} not found",
    ),
    (
        ("connection refused",),
        "cannot connect to {server}: connection refused (is the server running?)",
    ),
)


def _connect_failure(details: str, config: ClientConfig, *, timed_out: bool) -> str:
    lower = details.lower()
    values = {
        "server": config.server,
        "host": parse_address(config.server)[0],
        "ca": config.ca,
        "cert": config.cert,
        "key": config.key,
    }
    for needles, template in _CONNECT_FAILURES:
        if any(needle in lower for needle in needles):
            return template.format(**values)
    if timed_out:
        return (
            f"cannot connect to {config.server}: no answer within"
            f" {config.connect_timeout:g}s (is the server up, and a jobworker server?)"
        )
    reason = details.rsplit(": ", 1)[-1] if ": " in details else details
    return f"cannot connect to {config.server}: {reason}"
