"""What every command shares: the consoles, the argument and option types, the user-error
wrapper (one line on stderr, exit code 2) and the loading of a config or an existing run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.text import Text

from datamodels.config import Config, config_from_dict, config_from_yaml_text, load_config
from datamodels.config.trust import check_trusted
from datamodels.errors import DatamodelsError, RunMismatchError, StoreError
from datamodels.orchestrate.progress import log_console
from datamodels.store import Run

# One line per message, never folded at 80 columns in job logs or files (see log_console).
err_console = log_console()
out_console = log_console(stderr=False)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (see configs/)", show_default=False)]
RunArg = Annotated[str, typer.Argument(help="run directory (local path or pyarrow filesystem URI)")]
OutOpt = Annotated[
    str | None, typer.Option("--out", "-o", help="run directory; default runs/<config name>")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config field, e.g. --set train.epochs=5"),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)"),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="import the code a run's config.yaml names (model.factory, dataset.factory, "
        "train.recipe) even though this run was not made here from your own config",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
RetryOpt = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="give models whose attempts are spent a fresh budget "
        "(failures.parquet is moved to _failures/)",
    ),
]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a `DatamodelsError` printed as one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatamodelsError as err:  # printed literally: a message may hold [brackets]
            err_console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def load(config: Path, overrides: list[str] | None, trust_code: bool = False) -> Config:
    """The config file with its ``--set`` overrides. A run's own ``config.yaml`` (it records
    a ``config_hash``) is the run's, not the user's: the code it names must be trusted
    (`check_trusted`)."""
    cfg = load_config(config, overrides or [])
    tree = yaml.safe_load(Path(config).read_text())
    if isinstance(tree, dict) and "config_hash" in tree:
        check_trusted(cfg, str(Path(config).parent), trust_code)
    return cfg


def default_out(config: Config, out: str | None) -> str:
    """``--out``, or ``runs/<config name>``."""
    return out or f"runs/{config.name}"


def existing_run(run: str) -> Run:
    """``Run(run)``, refused in one line when the path holds no run."""
    handle = Run(run)
    if not handle.has_config():
        raise StoreError(
            f"{run} is not a run directory (no config.yaml); create one with "
            "`datamodels run CONFIG --out DIR`"
        )
    return handle


def saved_config(run: Run) -> Config:
    """The config an existing run (`existing_run`) was made with, from its ``config.yaml``."""
    return config_from_yaml_text(run.read_config_text())


def run_config(run: str, overrides: list[str] | None, trust_code: bool = False) -> Config:
    """The run's own config with stage settings overridden (training settings may not change);
    the code it names must be trusted (`check_trusted`) for the commands that compute."""
    saved = check_trusted(saved_config(existing_run(run)), run, trust_code)
    cfg = config_from_dict(saved.model_dump(mode="json"), overrides or [])
    if cfg.hash != saved.hash:
        raise RunMismatchError(
            "--set may change only resources, fit, estimate, gradients and evaluate settings "
            "of an existing "
            f"run ({run}); train a new run for other data, model, recipe or plans"
        )
    return cfg
