import numpy as np

from datamodels.config import config_from_dict
from datamodels.plans import masks_for, plan_models


def _config(**plans):
    return config_from_dict({"plans": [{"name": k, **v} for k, v in plans.items()]})


def test_ids_unique_contiguous_and_seeds():
    config = _config(train={"alpha": 0.5, "count": 30}, eval={"alpha": 0.3, "count": 5, "seeds": 3})
    planned = plan_models(config)
    assert planned.model_id.tolist() == list(range(45))
    assert (planned.plan[:30] == "train").all() and (planned.plan[30:] == "eval").all()
    ev = planned.take(np.arange(30, 45))
    # replicates of one mask share the mask but not the training seed
    assert ev.mask_index.tolist() == [i // 3 for i in range(15)]
    assert len(set(ev.seed.tolist())) == 15


def test_masks_are_a_pure_function_of_seed_plan_and_id():
    config = _config(train={"alpha": 0.5, "count": 50})
    planned = plan_models(config)
    forward = masks_for(config, planned, 300)
    shuffled = np.random.default_rng(1).permutation(50)
    again = masks_for(config, planned.take(shuffled), 300)
    np.testing.assert_array_equal(again, forward[shuffled])
    other_seed = config_from_dict({"seed": 1, "plans": [{"name": "train", "count": 50}]})
    assert not np.array_equal(masks_for(other_seed, plan_models(other_seed), 300), forward)


def test_alpha_within_binomial_tolerance():
    config = _config(a={"alpha": 0.5, "count": 200}, b={"alpha": 0.1, "count": 200})
    planned = plan_models(config)
    n = 500
    masks = masks_for(config, planned, n)
    for name, alpha in (("a", 0.5), ("b", 0.1)):
        rows = masks[planned.plan == name]
        sd = np.sqrt(alpha * (1 - alpha) / rows.size)
        assert abs(rows.mean() - alpha) < 5 * sd
        per_model_sd = np.sqrt(alpha * (1 - alpha) / n)
        assert np.all(np.abs(rows.mean(1) - alpha) < 6 * per_model_sd)
