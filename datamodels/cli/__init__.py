"""The ``datamodels`` command line: one sub-command per stage, plus status / verify / query.

User mistakes (``DatamodelsError``) are printed as one line on stderr with exit code 2;
nothing in the run directory is deleted on any error path.

The commands live by group; `app` is assembled here, in the order ``--help`` lists them:

* `pipeline`      prepare, train, fit, evaluate, estimate, removal, run;
* `attribute`     attribute (gradient estimators on a model trained elsewhere);
* `inspection`    status, compact, verify, query;
* `applications`  attack, sparse-layer, alpha-effect, lds-curve;
* `reports`       report, transfer-counterfactual, transfer-report;
* `serve`         serve (browse a run in the browser);
* `cluster`       submit and the ``jobs`` group (Ray Jobs);
* `common`        consoles, argument types, the user-error wrapper, loading a config or run;
* `help`          the typer classes that make the help read well.
"""

from __future__ import annotations

from datamodels.cli import applications, attribute, cluster, inspection, pipeline, reports, serve
from datamodels.cli.help import App

app = App(
    add_completion=False, no_args_is_help=True, help="Training-data attribution by mass retraining."
)
app.command()(pipeline.prepare)
app.command()(pipeline.train)
app.command()(pipeline.fit)
app.command()(pipeline.evaluate)
app.command()(pipeline.estimate)
app.command()(attribute.attribute)
app.command()(applications.attack)
app.command()(pipeline.removal)
app.command("run")(pipeline.run_all)
app.command()(inspection.status)
app.command()(inspection.compact)
app.command("sparse-layer")(applications.sparse_layer)
app.command()(inspection.verify)
app.command()(reports.report)
app.command("transfer-counterfactual")(reports.transfer_counterfactual)
app.command("transfer-report")(reports.transfer_report)
app.command("alpha-effect")(applications.alpha_effect)
app.command("lds-curve")(applications.lds_curve)
app.command()(inspection.query)
app.command()(cluster.submit)
app.command()(serve.serve)

jobs_app = App(no_args_is_help=True, help="Ray Jobs on a cluster: list, status, logs, stop.")
jobs_app.command("list")(cluster.jobs_list)
jobs_app.command("status")(cluster.jobs_status)
jobs_app.command("logs")(cluster.jobs_logs)
jobs_app.command("stop")(cluster.jobs_stop)
app.add_typer(jobs_app, name="jobs")

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="datamodels")
