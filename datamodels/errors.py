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
