"""Ray Jobs from the command line: ``datamodels submit`` and ``datamodels jobs``.

A submission packages a working directory (Ray's ``runtime_env.working_dir``, without run
directories, virtual environments, caches, VCS folders, large files and what
``.datamodelsignore`` / ``.gitignore`` name: `orchestrate.upload`), runs ``datamodels run CONFIG
--out URI`` on the cluster as the job's entrypoint, and can follow the job's log until the job
ends. The run directory must be one that every node can reach: an object-store URI, or (with
``shared_fs``) an absolute path on a filesystem that every node mounts. A relative path would
land in the job's temporary working directory on the head and vanish with it, and a local
path on this machine is invisible to the workers, so both are refused before anything is sent.

Talking to the Jobs API is `JobSubmissionClient`'s; this module only validates, builds the
request and turns Ray's answers and errors into one-line `JobError` messages.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodels.errors import JobError, MissingDependencyError
from datamodels.orchestrate.jobs_api import job_submission_client
from datamodels.orchestrate.upload import MAX_FILE_MB, Upload, plan_upload

# Settings a worker needs to reach the same object store as this shell (no credentials: the
# cluster's nodes use their own, e.g. an instance role or a Kubernetes secret).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "DATAMODELS_PROGRESS_INTERVAL",
)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
REQUEST_LIMIT_BYTES = 100 * 1024**2  # the Jobs API refuses a larger upload (HTTP 413)


def check_out(out: str, shared_fs: bool = False) -> None:
    """Refuse a run directory the cluster's workers cannot see (one line, with the fix)."""
    if "://" in out and not out.startswith("file://"):
        return
    path = out[len("file://") :] if out.startswith("file://") else out
    if not os.path.isabs(os.path.expanduser(path)):
        raise JobError(
            f"--out {out!r} is relative: the cluster's workers cannot see it (it would land in "
            "the job's temporary working directory and be lost); give an object-store URI "
            "(s3://bucket/runs/name) or an absolute path on a filesystem every node mounts, "
            "with --shared-fs"
        )
    if not shared_fs:
        raise JobError(
            f"--out {out!r} is a local path: the cluster's workers cannot see this machine's "
            "disk; give an object-store URI (s3://bucket/runs/name), or pass --shared-fs if "
            "that path is on a filesystem every node mounts"
        )


def config_in_working_dir(config: Path, working_dir: Path, upload: Upload | None = None) -> str:
    """``config`` relative to ``working_dir`` (POSIX): the path the job opens it by; refused
    when ``upload`` leaves it out."""
    resolved, root = config.expanduser().resolve(), working_dir.expanduser().resolve()
    if not resolved.is_file():
        raise JobError(f"config {config} does not exist")
    try:
        rel = resolved.relative_to(root).as_posix()
    except ValueError:
        raise JobError(
            f"config {config} is outside the working directory {root} that is uploaded with "
            "the job; run from the project that holds it or pass --working-dir"
        ) from None
    if upload is not None and rel not in upload.files:
        where, why = next(
            ((p, w) for p, w in upload.left_out if rel == p or rel.startswith(p + "/")),
            (rel, "left out"),
        )
        raise JobError(
            f"config {config} is not uploaded with the job ({where}: {why}); copy it into the "
            "project (a run's config.yaml: cp RUN/config.yaml myrun.yaml) and submit that"
        )
    return rel


def upload_plan(working_dir: Path, max_file_mb: float = MAX_FILE_MB) -> Upload:
    """What of ``working_dir`` the job gets (`orchestrate.upload.plan_upload`)."""
    if not working_dir.expanduser().is_dir():
        raise JobError(f"--working-dir {working_dir} is not a folder")
    return plan_upload(working_dir, max_file_mb)


def entrypoint(
    config_rel: str, out: str, overrides: Iterable[str] = (), quiet: bool = False
) -> str:
    """The job's shell command: ``datamodels run CONFIG --out URI [--set k=v ...]``."""
    words = ["datamodels", "run", config_rel, "--out", out]
    for override in overrides:
        words += ["--set", override]
    if quiet:
        words.append("--quiet")
    return shlex.join(words)


def runtime_env(
    working_dir: Path | Upload,
    env: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The working directory (without what its `Upload` leaves out) and the env vars the
    job's processes get: the `FORWARDED_ENV` set in ``environ`` (default: this process's),
    then ``env``."""
    upload = working_dir if isinstance(working_dir, Upload) else upload_plan(working_dir)
    environ = os.environ if environ is None else environ
    env_vars = {name: environ[name] for name in FORWARDED_ENV if environ.get(name)}
    env_vars.update(env or {})
    spec: dict[str, Any] = {"working_dir": str(upload.root), "excludes": upload.excludes()}
    if env_vars:
        spec["env_vars"] = env_vars
    return spec


def parse_env(pairs: Iterable[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict (`JobError` naming a pair without ``=``)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise JobError(f"--env {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


@dataclass(frozen=True)
class JobRow:
    """One job as the CLI shows it."""

    submission_id: str
    status: str
    entrypoint: str
    message: str
    start_time: int | None  # ms since the epoch
    end_time: int | None


def _enable_token_auth() -> None:
    """Send the cluster's token where one is configured (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, as
    ``ray job submit`` does; an explicit ``RAY_AUTH_MODE`` is respected."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str | None) -> Any:
    """A `JobSubmissionClient` for ``address`` (default: ``RAY_API_SERVER_ADDRESS`` /
    ``RAY_ADDRESS``); `JobError` in one line when the Jobs API cannot be reached."""
    _enable_token_auth()
    try:
        return job_submission_client(address)
    except MissingDependencyError:
        raise
    except Exception as exc:  # ConnectionError, auth errors, bad addresses: all one line
        where = (
            address
            or os.environ.get("RAY_API_SERVER_ADDRESS")
            or os.environ.get(
                "RAY_ADDRESS", "(no --address, RAY_API_SERVER_ADDRESS or RAY_ADDRESS)"
            )
        )
        raise JobError(
            f"cannot reach the Ray Jobs API at {where}: {_first_line(exc)}; is the head's "
            "dashboard running and the address its dashboard port (e.g. http://127.0.0.1:8265 "
            "through an SSH tunnel)?"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise JobError(f"{what}: {_first_line(exc)}") from None


def submit(
    jobs: Any,
    config_rel: str,
    out: str,
    overrides: Iterable[str],
    env: dict[str, Any],
    quiet: bool = False,
    submission_id: str | None = None,
) -> str:
    """Submit ``datamodels run`` with runtime environment ``env``; returns the submission id."""
    return _call(
        "job submission failed",
        jobs.submit_job,
        entrypoint=entrypoint(config_rel, out, overrides, quiet),
        runtime_env=env,
        submission_id=submission_id,
        metadata={"datamodels_out": out, "datamodels_config": config_rel},
    )


def status(jobs: Any, submission_id: str) -> JobRow:
    info = _call(f"job {submission_id}", jobs.get_job_info, submission_id)
    return _row(info)


def _row(info: Any) -> JobRow:
    return JobRow(
        submission_id=str(info.submission_id or info.job_id),
        status=str(info.status),
        entrypoint=str(info.entrypoint or ""),
        message=" ".join(str(info.message or "").split()),
        start_time=info.start_time,
        end_time=info.end_time,
    )


def list_jobs(jobs: Any) -> list[JobRow]:
    """Submitted jobs (not drivers started by hand), oldest first."""
    rows = [
        _row(info)
        for info in _call("listing jobs failed", jobs.list_jobs)
        if info.submission_id is not None
    ]
    return sorted(rows, key=lambda row: row.start_time or 0)


def logs(jobs: Any, submission_id: str) -> str:
    return _call(f"job {submission_id}", jobs.get_job_logs, submission_id)


def stop(jobs: Any, submission_id: str) -> bool:
    """True when a stop was sent, False when the job had already ended."""
    return bool(_call(f"job {submission_id}", jobs.stop_job, submission_id))


def follow(jobs: Any, submission_id: str, write: Callable[[str], Any] | None = None) -> JobRow:
    """Copy the job's log to ``write`` (default: stdout) as it is produced, until the job
    ends; returns the job's final state."""
    write = write or _write_stdout

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(submission_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except Exception as exc:  # a dropped connection: the job itself may still be running
        row = status(jobs, submission_id)
        if row.status not in TERMINAL:
            raise JobError(
                f"lost the log stream of job {submission_id} ({_first_line(exc)}); it is "
                f"{row.status}: `datamodels jobs logs {submission_id}` to read on"
            ) from None
    return wait(jobs, submission_id)


def wait(jobs: Any, submission_id: str, poll_s: float = 1.0, timeout_s: float = 60.0) -> JobRow:
    """The job's state once terminal (the log stream can close just before the status is
    written), or as it stands after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    row = status(jobs, submission_id)
    while row.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll_s)
        row = status(jobs, submission_id)
    return row


def _write_stdout(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()
