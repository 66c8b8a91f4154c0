"""What the α effect and the LDS-against-models curve cost, against one fit of the same run.

    python benchmarks/alpha_effect_cost.py RUN [--counts 100,200,500,1000,2000]

RUN is a finished run with an ``alpha_grid`` plan (e.g. configs/digits.yaml plus
``{name: alpha_grid, kind: alpha_grid, levels: 4, count: 200}``). The baseline, measured in
the same process, is the fit stage's regression on the whole fitting plan for the test
targets (what ``datamodels fit`` does); each application is reported in seconds and as a
multiple of that baseline, with its headline figures.
"""

from __future__ import annotations

import argparse
import time
import warnings

from datamodels.applications.alpha_effect import (
    alpha_effect_from_run,
    alpha_effect_summary,
    lds_curve_from_run,
)
from datamodels.regress.select import fit_datamodels
from datamodels.stages.prepare import load_run_config
from datamodels.store import Run
from datamodels.store.positions import eval_positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--counts", default="100,200,500,1000,2000")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # solver tolerance warnings on the smallest fits
    run = Run(args.run)
    config = load_run_config(run)
    masks, margins = run.masks_and_margins(plan=config.fit.plan)
    targets = eval_positions(run, "test")
    print(f"{args.run}: {len(masks)} fitting models, {len(targets)} test targets")

    start = time.perf_counter()
    fit_datamodels(masks, margins[:, targets], config.fit)
    baseline = time.perf_counter() - start
    print(f"{'one fit (baseline)':<28}{baseline:>9.1f} s{1.0:>8.1f}x")

    start = time.perf_counter()
    curve = lds_curve_from_run(run, tuple(int(c) for c in args.counts.split(",")), config)
    seconds = time.perf_counter() - start
    print(f"{'lds curve':<28}{seconds:>9.1f} s{seconds / baseline:>8.1f}x")

    start = time.perf_counter()
    frame = alpha_effect_from_run(run, config=config)
    seconds = time.perf_counter() - start
    print(f"{'alpha effect':<28}{seconds:>9.1f} s{seconds / baseline:>8.1f}x")

    if curve is not None:
        print("\n" + curve.to_string(index=False, float_format="{:.4f}".format))
    if frame is not None:
        summary = alpha_effect_summary(frame)
        print("\n" + summary.to_string(index=False, float_format="{:.3f}".format))


if __name__ == "__main__":
    main()
