"""The old import path of the gradient estimators' stage: the one ``estimate`` stage
(`datamodels.stages.estimate.EstimateStage`) runs every method now. Kept only for importers
that still name ``GradientStage`` / ``GRADIENT_METHODS`` here; it defines no stage."""

from datamodels.methods.devices import check_gradient_device, planned_device, task_device
from datamodels.stages.estimate import GRADIENT_METHODS
from datamodels.stages.estimate import EstimateStage as GradientStage

__all__ = [
    "GRADIENT_METHODS", "GradientStage", "check_gradient_device", "planned_device",
    "task_device",
]
