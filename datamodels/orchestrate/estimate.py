"""The Ray driver for the gradient estimators: one task per work unit (``Unit``), bounded
in flight, retried on worker death, resumable (finished parts are never recomputed), with a
progress bar; then the in-process reduction into ``scores/`` and ``self_scores/``.

With the exact solver, influence and influence_pert form a task graph: one Hessian task per
model, whose result (float64[P, P] in Ray's object store) every unit of that model takes as
an argument, so each Hessian is computed once, not once per worker process.
"""

from __future__ import annotations

from rich.console import Console

from datamodels.config import Config
from datamodels.errors import DatamodelsError
from datamodels.estimate import EstimateError
from datamodels.estimate_gradients import (
    finish_job,
    is_finished,
    missing_units,
    needs_hessian,
    plan_job,
    run_hessian,
    run_unit,
)
from datamodels.orchestrate.driver import init_ray
from datamodels.orchestrate.progress import TrainProgress
from datamodels.store import Run


def estimate_gradients(
    config: Config, uri: str, method: str, address: str | None = None, show_progress: bool = True,
    console: Console | None = None,
) -> dict[str, int]:
    """Compute ``method`` over the run's checkpoints with Ray tasks; returns row counts."""
    import ray

    console = console or Console(stderr=True)
    run = Run(uri)
    job = plan_job(config, run, method)
    if is_finished(run, job):
        console.print(f"{method}: scores/{method}.parquet is up to date with these settings; nothing to do")
        return {"scores": len(job.targets), "self_scores": run.n_train, "models": len(job.model_ids)}
    todo = missing_units(run, job)
    if todo:
        init_ray(address)
        g = config.gradients
        options = dict(num_cpus=g.num_cpus, max_retries=config.resources.task_retries,
                       retry_exceptions=False, max_calls=0)
        remote = ray.remote(**options)(run_unit)
        remote_hessian = ray.remote(**options)(run_hessian)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        limit = config.resources.max_in_flight or max(2, 2 * int(cpus // g.num_cpus))
        config_text = config.to_yaml()
        job_ref = ray.put(job)
        queue, pending = list(reversed(todo)), {}
        done_before = len(job.units) - len(todo)
        left = {m: sum(u.model_id == m for u in todo) for m in job.model_ids}
        # model id -> ObjectRef of its factored Hessian: submitted with the model's first unit
        # and one model ahead (so the next one is ready), dropped once its units are done
        hessians: dict[int, object] = {}
        order = [m for m in job.model_ids if left[m]]

        def hessian_for(model_id: int):
            if not needs_hessian(config, method):
                return None
            position = order.index(model_id)
            for m in order[position : position + 2]:
                if m not in hessians and left[m]:
                    hessians[m] = remote_hessian.remote(run.uri, config_text, job_ref, m)
            return hessians[model_id]

        with TrainProgress(len(job.units), done_before, enabled=show_progress, console=console,
                           what=f"{method} tasks") as progress:
            while queue or pending:
                while queue and len(pending) < limit:
                    unit = queue.pop()
                    ref = remote.remote(run.uri, config_text, job_ref, unit, hessian_for(unit.model_id))
                    pending[ref] = unit
                ready, _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ready[0])
                try:
                    ray.get(ready[0])
                except Exception as err:  # noqa: BLE001 - report the unit; finished parts are kept
                    for ref in pending:
                        ray.cancel(ref)
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, DatamodelsError):
                        text = str(cause)
                    else:
                        text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                    raise EstimateError(f"{method}: task {unit.name} failed ({text}); finished parts are kept in "
                                        f"{run.fs.display(job.part_dir)}, rerun to resume") from None
                progress.advance(1)
                left[unit.model_id] -= 1
                if left[unit.model_id] == 0:
                    hessians.pop(unit.model_id, None)  # frees it in the object store
    return finish_job(run, job)
