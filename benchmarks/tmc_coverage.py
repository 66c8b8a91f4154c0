"""Coverage of TMC-Shapley's 95% intervals against exhaustive enumeration.

Four ridge games on n = 10 points (the exact Shapley values by enumerating all 2^10
subsets), complete walks drawn at random, and for each budget of prefix models the fraction
of (seed, game, point) whose exact value lies outside ±1.96·stderr — for the Student-t
interval over walks that `tmc_shapley` reports now and for the normal interval it reported
before (the same standard error without the t factor). 0.05 is the promise.

    PYTHONPATH=$PWD python benchmarks/tmc_coverage.py [--seeds 400]
"""

from __future__ import annotations

import argparse

from tests.estimators.test_tmc import exact_games, outside_fraction

BUDGETS = (200, 800, 3_200, 12_800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=400)
    args = parser.parse_args()
    utility, exact = exact_games()
    n = exact.shape[1]
    print(f"n = {n}, {exact.shape[0]} games, {args.seeds} seeds per budget")
    print("| models | walks | outside, normal (before) | outside, Student-t (now) |")
    print("|---:|---:|---:|---:|")
    for n_models in BUDGETS:
        before = outside_fraction(utility, exact, n_models, args.seeds, t_interval=False)
        now = outside_fraction(utility, exact, n_models, args.seeds)
        print(f"| {n_models:,} | {n_models // (n + 1):,} | {before:.3f} | {now:.3f} |")


if __name__ == "__main__":
    main()
