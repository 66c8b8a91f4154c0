"""The Ray Jobs API client, the one place ``datamodels submit`` / ``jobs`` touch Ray."""

from __future__ import annotations

from typing import Any

from datamodels.orchestrate.optional import require_ray


def job_submission_client(address: str | None) -> Any:
    """Ray's `JobSubmissionClient` for ``address`` (None: ``RAY_API_SERVER_ADDRESS`` /
    ``RAY_ADDRESS``); raises whatever Ray raises when the API cannot be reached, and
    `MissingDependencyError` (one line) where Ray is not installed."""
    require_ray("datamodels submit and jobs")
    from ray.job_submission import JobSubmissionClient  # defers ray: a heavy import

    return JobSubmissionClient(address)
