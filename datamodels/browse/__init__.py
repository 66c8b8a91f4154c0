"""`datamodels serve`: a local web app to browse a run, read-only.

(The package is ``browse``: ``datamodels.serve`` is the notebook verb, ``dm.serve(run)``.)

Pages: the test examples (a grid filterable by class, correctness, brittleness and LDS, sortable
by margin, datamodel margin, per-target LDS, brittleness), one test example (each method's
most helpful and harmful training examples side by side, their agreement, its counterfactual
removals, its weights' histogram), one training example (whom it helps and hurts, its self
scores, its label and whether it was flipped), mislabel candidates, leakage pairs, and the
methods (LDS with intervals, the LDS curve, where two methods disagree most).

* `reader`        `RunReader`: cached reads through `Run` and the DuckDB views of `query`;
* `rankings`      the run-wide rankings: from the browse index when current, else the scores;
* `index`         `BrowseIndex`: the ``browse_index`` stage's tables as arrays, looked up;
* `images`        inputs as PNG, histograms and curves as inline SVG (no matplotlib);
* `layout`        the page frame, escaping, tables and thumbnails;
* `views_tests`, `views_train`, `views_methods`: the pages;
* `app`           the Starlette app, the foreground server and the background one (`start`).
"""

from datamodels.browse.app import DEFAULT_PORT, Served, create_app, serve_forever, start

__all__ = ["DEFAULT_PORT", "Served", "create_app", "serve_forever", "start"]
