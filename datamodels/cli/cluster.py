"""Ray Jobs on a cluster: ``submit`` (a run as a job) and the ``jobs`` group (``list``,
``status``, ``logs``, ``stop``)."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer
from rich.table import Table

from datamodels import jobs
from datamodels.cli.common import ConfigArg, SetOpt, err_console, load, out_console, user_errors
from datamodels.orchestrate.optional import require_ray

JobsAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray Jobs API (the head's dashboard), e.g. http://127.0.0.1:8265 "
        "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)",
    ),
]
JobIdArg = Annotated[str, typer.Argument(help="submission id (printed by `datamodels submit`)")]


def _warn_plain_http(address: str | None) -> None:
    parsed = urlparse(address or "")
    if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"warning: {address} is plain HTTP to another host: the job and the cluster's "
            "token travel unencrypted; prefer an SSH tunnel (http://127.0.0.1:8265) or https",
            style="yellow", markup=False, highlight=False)


SHOWN_LEFT_OUT = 20


def _show_upload(upload: jobs.Upload) -> None:
    """What is left out of the upload (one line each) and what is sent, before sending."""
    for path, why in upload.left_out[:SHOWN_LEFT_OUT]:
        err_console.print(f"upload: left out {path} ({why})", highlight=False, markup=False)
    if len(upload.left_out) > SHOWN_LEFT_OUT:
        err_console.print(f"upload: left out {len(upload.left_out) - SHOWN_LEFT_OUT} more",
                          highlight=False, markup=False)
    err_console.print(
        f"upload: {len(upload.files)} file{'' if len(upload.files) == 1 else 's'}, "
        f"{upload.size / 1e6:,.2f} MB from {upload.root}",
        highlight=False, markup=False)
    if upload.size > jobs.REQUEST_LIMIT_BYTES:
        err_console.print(
            f"warning: {upload.size / 1e6:,.0f} MB may exceed the Jobs API's request limit "
            "(100 MiB, compressed); name large folders in .datamodelsignore",
            style="yellow", markup=False, highlight=False)


def _job_line(row) -> str:
    message = f": {row.message}" if row.message and row.status != "SUCCEEDED" else ""
    return f"job {row.submission_id} {row.status}{message}"


@user_errors
def submit(
    config: ConfigArg,
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o",
            help="run directory every node can reach: an object-store URI (s3://bucket/run), "
            "or an absolute path on a shared filesystem with --shared-fs",
        ),
    ],
    address: JobsAddressOpt = None,
    set_: SetOpt = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the submission id and return at once")
    ] = False,
    shared_fs: Annotated[
        bool,
        typer.Option("--shared-fs", help="--out is an absolute path every node mounts"),
    ] = False,
    working_dir: Annotated[
        Path,
        typer.Option(
            "--working-dir",
            help="uploaded as the job's working directory (without run directories, "
            "virtual environments, .git, caches, large files and what .datamodelsignore or "
            ".gitignore name); must hold CONFIG",
        ),
    ] = Path("."),
    max_file_mb: Annotated[
        float,
        typer.Option("--max-file-mb", help="files larger than this are not uploaded"),
    ] = jobs.MAX_FILE_MB,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for the job's processes, repeatable"),
    ] = None,
    submission_id: Annotated[
        str | None, typer.Option("--submission-id", help="choose the submission id")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress lines in the job's log")
    ] = False,
) -> None:
    """Submit `datamodels run CONFIG --out URI` to a Ray cluster as a Ray Job, print its
    submission id and (unless --no-wait) follow its log; exits 0 when the job succeeded,
    1 when it failed or was stopped."""
    require_ray("datamodels submit")  # before anything is planned or printed
    jobs.check_out(out, shared_fs)
    load(config, set_)  # a config mistake is reported here, not in the job's log
    upload = jobs.upload_plan(working_dir, max_file_mb)
    config_rel = jobs.config_in_working_dir(config, working_dir, upload)
    spec = jobs.runtime_env(upload, jobs.parse_env(env or []))
    _show_upload(upload)
    _warn_plain_http(address)
    client = jobs.client(address)
    job_id = jobs.submit(client, config_rel, out, set_ or [], spec, quiet, submission_id)
    out_console.print(job_id, highlight=False, markup=False)
    err_console.print(
        f"submitted: {jobs.entrypoint(config_rel, out, set_ or [], quiet)} (working dir "
        f"{spec['working_dir']}); `datamodels jobs logs {job_id}` or "
        f"`datamodels jobs stop {job_id}`",
        highlight=False, markup=False)
    if no_wait:
        return
    try:
        row = jobs.follow(client, job_id)
    except KeyboardInterrupt:
        err_console.print(
            f"stopped following; job {job_id} keeps running (`datamodels jobs stop {job_id}`)",
            highlight=False, markup=False)
        raise typer.Exit(130) from None
    err_console.print(_job_line(row), highlight=False, markup=False)
    if row.status != "SUCCEEDED":
        raise typer.Exit(1)


@user_errors
def jobs_list(address: JobsAddressOpt = None) -> None:
    """Submitted jobs, oldest first: id, status, start time, entrypoint."""
    rows = [
        (
            row.submission_id,
            row.status,
            datetime.datetime.fromtimestamp(row.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if row.start_time
            else "",
            row.entrypoint,
        )
        for row in jobs.list_jobs(jobs.client(address))
    ]
    table = Table()
    # ids, statuses and times stay whole on any width (ids are copied into other commands);
    # the entrypoint wraps
    for i, column in enumerate(("submission_id", "status", "started")):
        width = max([len(column)] + [len(str(r[i])) for r in rows])
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("entrypoint", overflow="fold")
    for row in rows:
        table.add_row(*(str(value) for value in row))
    out_console.print(table)


@user_errors
def jobs_status(job_id: JobIdArg, address: JobsAddressOpt = None) -> None:
    """One line: the job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    out_console.print(
        _job_line(jobs.status(jobs.client(address), job_id)), highlight=False, markup=False
    )


@user_errors
def jobs_logs(
    job_id: JobIdArg,
    address: JobsAddressOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the job ends")
    ] = False,
) -> None:
    """The job's log so far (with --follow: until it ends, exiting 1 unless it succeeded)."""
    client = jobs.client(address)
    if not follow:
        sys.stdout.write(jobs.logs(client, job_id))
        return
    row = jobs.follow(client, job_id)
    err_console.print(_job_line(row), highlight=False, markup=False)
    if row.status != "SUCCEEDED":
        raise typer.Exit(1)


@user_errors
def jobs_stop(job_id: JobIdArg, address: JobsAddressOpt = None) -> None:
    """Stop a running job (the run directory keeps every finished shard: resubmit to resume)."""
    client = jobs.client(address)
    sent = jobs.stop(client, job_id)
    row = jobs.wait(client, job_id, timeout_s=30.0) if sent else jobs.status(client, job_id)
    prefix = "" if sent else "already ended: "
    out_console.print(prefix + _job_line(row), highlight=False, markup=False)
