"""What reading a beton costs a process: the whole file through FFCV's ``Loader`` against the
page reader (``datamodels.data.beton_file``), and ``prepare`` twice in one process.

    python benchmarks/beton_read.py

Prints, for a float-feature file (digits-sized) and a CIFAR-shaped image file: the first
``Loader`` decode in a fresh process (FFCV's import and its pipeline compile included), a
second ``Loader`` decode, and the page reader, with the ratio against the second ``Loader``
decode; then the wall time of two ``prepare`` calls in one process and the CPU time of their
writer processes. The page reader's arrays are checked against the arrays written
(``tests/data/test_beton.py`` checks them against the ``Loader``'s).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILES = {"features 3,000 x 17 float32": (3000, (17,), np.float32),
         "images 5,000 x 32 x 32 x 3 uint8": (5000, (32, 32, 3), np.uint8)}  # fmt: skip

LOADER = """
import sys, time
t = time.perf_counter()
from datamodels.data.beton import _pipelines
from ffcv.loader import Loader, OrderOption
def decode(path):
    loader = Loader(path, batch_size=4096, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines=_pipelines())
    return [x.numpy().copy() for x, _ in loader]
decode(sys.argv[1])
first = time.perf_counter() - t
t = time.perf_counter()
decode(sys.argv[1])
print(first, time.perf_counter() - t)
"""


def write(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    from datamodels.data.beton import write_beton
    from datamodels.data.dataset import ArrayDataset

    rng = np.random.default_rng(0)
    paths = {}
    for name, (n, shape, dtype) in FILES.items():
        x = (rng.normal(size=(n, *shape)) * 50).astype(dtype)
        y = rng.integers(0, 10, size=n)
        paths[name] = folder / f"{n}.beton", x
        write_beton(ArrayDataset(name, x, y, np.zeros(n, bool), 10), paths[name][0])
    return paths


def prepare_twice(folder: Path) -> str:
    from datamodels import api
    from datamodels.config import config_from_dict

    config = config_from_dict({
        "name": "digits", "dataset": {"name": "digits"}, "model": {"arch": "logreg"},
        "plans": [{"name": "train", "alpha": 0.5, "count": 2}],
    })  # fmt: skip
    walls = []
    for i in range(2):
        t = time.perf_counter()
        api.prepare(config, str(folder / f"run{i}"), show_progress=False)
        walls.append(time.perf_counter() - t)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (f"prepare (digits) twice in one process: {walls[0]:.2f} s, then {walls[1]:.2f} s; "
            f"writer processes' CPU {children.ru_utime + children.ru_stime:.1f} s")


def main() -> None:
    from datamodels.data.beton_file import read_beton

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(prepare_twice(folder))
        print("| file | Loader, fresh process | Loader, again | page reader | ratio |")
        print("|---|---|---|---|---|")
        for name, (path, written) in write(folder).items():
            out = subprocess.run([sys.executable, "-c", LOADER, str(path)], check=True,
                                 capture_output=True, text=True).stdout.split()  # fmt: skip
            first, again = float(out[-2]), float(out[-1])
            t = time.perf_counter()
            features, _ = read_beton(path)
            ours = time.perf_counter() - t
            np.testing.assert_array_equal(features, written)
            print(f"| {name} | {first:.2f} s | {again:.3f} s | {ours * 1e3:.1f} ms | "
                  f"{again / ours:,.0f}x |")


if __name__ == "__main__":
    main()
