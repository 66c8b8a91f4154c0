"""What ``datamodels submit`` uploads as the job's working directory: the project's code and
configs, never its outputs.

`plan_upload` walks the working directory and leaves out, each with the reason it prints:

* run directories (a folder holding ``config.yaml`` and ``models/`` or
  ``examples.parquet``) and the top folder ``runs/`` (the default ``--out``): a second
  submit from the same folder would otherwise send the first run along (and exceed the Jobs
  API's 100 MiB request limit);
* virtual environments (a folder holding ``pyvenv.cfg``), version-control folders, caches
  and build outputs (`SKIPPED_DIRS`), compiled and FFCV files (`SKIPPED_SUFFIXES`);
* files over ``max_file_bytes`` (default 50 MB);
* whatever ``.datamodelsignore`` or ``.gitignore`` (in the folder or any sub-folder;
  gitignore patterns) names.

The `Upload` it returns lists the files sent, their total size, what was left out, and the
``excludes`` patterns that make Ray's packaging leave out exactly the same paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pathspec import PathSpec

MAX_FILE_MB = 50.0
IGNORE_FILES = (".datamodelsignore", ".gitignore")
SKIPPED_DIRS = {
    ".git": "version control", ".hg": "version control", ".svn": "version control",
    "__pycache__": "cache", ".pytest_cache": "cache", ".ruff_cache": "cache",
    ".mypy_cache": "cache", ".ipynb_checkpoints": "cache", ".cache": "cache",
    ".tox": "cache", ".nox": "cache", "node_modules": "dependencies",
    "build": "build output", "dist": "build output",
}
SKIPPED_SUFFIXES = {".pyc": "compiled", ".pyo": "compiled", ".beton": "FFCV data",
                    ".egg-info": "build output"}


@dataclass
class Upload:
    """``files``: relative POSIX paths sent; ``size``: their bytes; ``left_out``:
    ``[(relative path, why)]`` of each file or folder not sent (a folder once)."""

    root: Path
    files: list[str] = field(default_factory=list)
    size: int = 0
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def excludes(self) -> list[str]:
        """gitignore patterns, anchored at the working directory, of every path left out."""
        return ["/" + _escape(path) for path, _ in self.left_out]


def _escape(path: str) -> str:
    """``path`` as a literal gitignore pattern (no wildcards, no negation, no comment)."""
    for char in "\\[]*?!#":
        path = path.replace(char, "\\" + char)
    return path.replace(" ", "\\ ") if path.endswith(" ") else path


def is_run_dir(folder: Path) -> bool:
    """A run directory: ``config.yaml`` beside ``models/`` or ``examples.parquet``."""
    return (folder / "config.yaml").is_file() and (
        (folder / "models").is_dir() or (folder / "examples.parquet").is_file()
    )


def _ignore_specs(folder: Path, rel: str) -> list[tuple[str, str, PathSpec]]:
    """``[(base, file name, spec)]`` of the ignore files in ``folder`` (``rel`` from the
    root)."""
    specs = []
    for name in IGNORE_FILES:
        path = folder / name
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            specs.append((rel, name, PathSpec.from_lines("gitwildmatch", lines)))
    return specs


def _ignored_by(specs, rel: str, is_dir: bool) -> str | None:
    for base, name, spec in specs:
        inner = rel[len(base) + 1:] if base else rel
        if spec.match_file(inner + ("/" if is_dir else "")):
            return name
    return None


def _why_dir(folder: Path, name: str, top: bool) -> str | None:
    if top and name == "runs":
        return "the default --out folder"
    if name in SKIPPED_DIRS:
        return SKIPPED_DIRS[name]
    if name.endswith(".egg-info"):
        return "build output"
    if (folder / "pyvenv.cfg").is_file():
        return "virtual environment"
    if is_run_dir(folder):
        return "run directory"
    return None


def plan_upload(working_dir: str | os.PathLike, max_file_mb: float = MAX_FILE_MB) -> Upload:
    """What is sent of ``working_dir`` (see the module docstring), in sorted walk order."""
    root = Path(working_dir).expanduser().resolve()
    upload = Upload(root)
    limit = max_file_mb * 1e6

    def walk(folder: Path, rel: str, specs: list) -> None:
        specs = specs + _ignore_specs(folder, rel)
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir() and not entry.is_symlink():
                why = _why_dir(entry, entry.name, not rel) or _ignored_by(specs, path, True)
                if why:
                    upload.left_out.append((path, why))
                else:
                    walk(entry, path, specs)
                continue
            if not entry.is_file():
                continue
            size = entry.stat().st_size
            why = SKIPPED_SUFFIXES.get(entry.suffix) or _ignored_by(specs, path, False)
            if why is None and size > limit:
                why = f"{size / 1e6:,.1f} MB, over {max_file_mb:g} MB"
            if why:
                upload.left_out.append((path, why))
            else:
                upload.files.append(path)
                upload.size += size

    walk(root, "", [])
    return upload
