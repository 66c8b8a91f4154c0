"""Gradient-based attribution as pure functions of one trained model (or a few).

Every score is float64[n_targets, n_train] with the project's sign: positive =
including the training example raises the target's margin (or lowers its loss) = helpful.

* ``model``: ``FunctionalModel`` (flat params + functional logits), ``logreg_model``,
  ``mlp_model``, the trainer's objective, ``fit_logreg``.
* ``module``: ``module_model``, any ``nn.Module`` (resnet9, fastnet, a user's) through
  ``torch.func.functional_call``, eval mode, its last ``nn.Linear`` for representer points.
* ``grads``: per-example gradients (``vmap(grad)``), HVPs, the exact Hessian.
* ``checkpointed``: a saved checkpoint as a ``FunctionalModel``, the configured solver.
* ``metagradient`` (with ``mlp_adjoint``, its hand-written MLP products) and ``hydra``:
  derivatives through a replayed training run.
* ``projection``: TRAK's random projection, regenerated block by block (never held whole).
* ``ihvp``: inverse-HVP solvers ``Exact``, ``ConjugateGradient``, ``Lissa``.
* ``influence``, ``influence_pert``, ``tracin``, ``representer``, ``trak``: the estimators
  and their self scores (mislabel detection).
"""

from datamodels.gradients.ihvp import ConjugateGradient, Exact, Lissa, Solver, inverse_hvp
from datamodels.gradients.influence import influence_scores, influence_self_scores
from datamodels.gradients.influence_pert import AttackResult, craft_attack, influence_pert_scores
from datamodels.gradients.model import FunctionalModel, fit_logreg, logreg_model, mlp_model
from datamodels.gradients.module import module_model
from datamodels.gradients.projection import Projection
from datamodels.gradients.representer import representer_scores, representer_self_scores
from datamodels.gradients.tracin import tracin_scores, tracin_self_scores
from datamodels.gradients.trak import trak_scores, trak_self_scores

__all__ = [
    "AttackResult", "ConjugateGradient", "Exact", "FunctionalModel", "Lissa", "Solver",
    "craft_attack", "fit_logreg", "influence_pert_scores", "influence_scores",
    "influence_self_scores", "inverse_hvp", "logreg_model", "mlp_model", "module_model",
    "Projection", "representer_scores",
    "representer_self_scores", "tracin_scores", "tracin_self_scores", "trak_scores",
    "trak_self_scores",
]
