"""What datamodels are for (Ilyas et al. 2022, §4–5): pure functions over the public tables.

* `leakage`       train/test pairs ranked by datamodel weight and by cosine similarity of
                  datamodel vectors (near-duplicates across the split);
* `embeddings`    test targets embedded by their weight vectors: principal components,
                  spectral clusters, the examples at each extreme;
* `loo_agreement` each method's correlation with actual leave-one-out retraining;
* `alpha_effect`  datamodels per subset size α (top-k overlap and LDS per α), and LDS
                  against the number of models (`lds_curve`);
* `brittleness`   per target, the smallest number of most-helpful training points whose
                  removal flips the prediction according to the datamodel (predicted only);
* `removal`       counterfactual removal: the top-k sets by score, their predicted change,
                  and the retrained change reduced per set (the ``removal`` stage retrains).

Each module has array-level functions (known answers in
tests/applications/test_applications.py) and one ``*_from_run`` helper that reads a `Run`
(the run directory's public tables) and calls them.
"""

from datamodels.applications.alpha_effect import (
    alpha_effect,
    alpha_effect_from_run,
    alpha_effect_summary,
    lds_curve,
    lds_curve_from_run,
)
from datamodels.applications.brittleness import (
    BrittlenessResult,
    brittleness,
    brittleness_from_run,
)
from datamodels.applications.embeddings import (
    Embedding,
    embed,
    embedding_from_run,
    extremes,
    spectral_clusters,
)
from datamodels.applications.leakage import (
    cosine_pairs,
    leakage_from_run,
    top_weight_pairs,
)
from datamodels.applications.loo_agreement import (
    loo_agreement,
    loo_agreement_from_run,
    loo_effects_from_run,
)
from datamodels.applications.tables import split_scores

__all__ = [
    "BrittlenessResult",
    "alpha_effect",
    "alpha_effect_from_run",
    "alpha_effect_summary",
    "lds_curve",
    "lds_curve_from_run",
    "Embedding",
    "brittleness",
    "brittleness_from_run",
    "cosine_pairs",
    "embed",
    "embedding_from_run",
    "extremes",
    "leakage_from_run",
    "loo_agreement",
    "loo_agreement_from_run",
    "loo_effects_from_run",
    "spectral_clusters",
    "split_scores",
    "top_weight_pairs",
]
