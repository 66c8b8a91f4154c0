"""Named errors for mistakes a user can make. The CLI prints their message on one line."""


class DatamodelsError(Exception):
    """Base class: a user-facing error whose message names the field, file or id and the fix."""


class ConfigError(DatamodelsError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""


class DataError(DatamodelsError):
    """A dataset file is missing or malformed."""


class RunMismatchError(DatamodelsError):
    """The output directory holds a run made from a different configuration."""


class StoreError(DatamodelsError):
    """A run-directory table is missing, torn or has the wrong schema."""


class TrainingError(DatamodelsError):
    """A model could not be trained (e.g. non-finite loss)."""


class CheckpointError(StoreError):
    """A checkpoint the index names is missing or unreadable, or a model has none."""


class FitError(DatamodelsError):
    """The run cannot be fitted as configured (too few models, no targets)."""


class EstimateError(DatamodelsError):
    """The run lacks the models or checkpoints an estimator needs, or one of its tasks failed."""


class EvaluateError(DatamodelsError):
    """Nothing to evaluate, or no held-out models to evaluate on."""



class EstimatorInputError(DatamodelsError, ValueError):
    """The arrays given to an estimator disagree in shape, dtype or content."""


class JobError(DatamodelsError):
    """A Ray job cannot be submitted, found or followed (unreachable Jobs API, unknown id), or
    its run directory is one the cluster's workers cannot see."""


class RunLockedError(DatamodelsError):
    """Another process is writing this run directory."""


class InfrastructureError(DatamodelsError):
    """The machine or the cluster failed (disk full, read-only run directory, lost workers);
    no model's attempt budget was spent."""


class MissingDependencyError(DatamodelsError):
    """A command needs an optional package that is not installed (FFCV, Ray, DuckDB, ...)."""

    def __init__(self, module: str, purpose: str, install: str) -> None:
        super().__init__(f"{purpose} needs {module}, not installed here; {install}")
