import numpy as np

from datamodels.config import config_from_dict
from datamodels.plans import masks_for, plan_models


def _config(**plans):
    return config_from_dict({"plans": [{"name": k, **v} for k, v in plans.items()]})


def test_ids_unique_contiguous_and_seeds():
    config = _config(train={"alpha": 0.5, "count": 30}, eval={"alpha": 0.3, "count": 5, "seeds": 3})
    planned = plan_models(config, 100)
    assert planned.model_id.tolist() == list(range(45))
    assert (planned.plan[:30] == "train").all() and (planned.plan[30:] == "eval").all()
    ev = planned.take(np.arange(30, 45))
    # replicates of one mask share the mask but not the training seed
    assert ev.mask_index.tolist() == [i // 3 for i in range(15)]
    assert len(set(ev.seed.tolist())) == 15


def test_masks_are_a_pure_function_of_seed_plan_and_id():
    config = _config(train={"alpha": 0.5, "count": 50})
    planned = plan_models(config, 300)
    forward = masks_for(config, planned, 300)
    shuffled = np.random.default_rng(1).permutation(50)
    again = masks_for(config, planned.take(shuffled), 300)
    np.testing.assert_array_equal(again, forward[shuffled])
    other_seed = config_from_dict({"seed": 1, "plans": [{"name": "train", "count": 50}]})
    assert not np.array_equal(masks_for(other_seed, plan_models(other_seed, 300), 300), forward)


def test_alpha_within_binomial_tolerance():
    config = _config(a={"alpha": 0.5, "count": 200}, b={"alpha": 0.1, "count": 200})
    n = 500
    planned = plan_models(config, n)
    masks = masks_for(config, planned, n)
    for name, alpha in (("a", 0.5), ("b", 0.1)):
        rows = masks[planned.plan == name]
        sd = np.sqrt(alpha * (1 - alpha) / rows.size)
        assert abs(rows.mean() - alpha) < 5 * sd
        per_model_sd = np.sqrt(alpha * (1 - alpha) / n)
        assert np.all(np.abs(rows.mean(1) - alpha) < 6 * per_model_sd)


def test_alpha_grid_levels_and_uniform():
    from datamodels.estimators import owen_grid

    config = _config(
        g={"kind": "alpha_grid", "levels": 4, "count": 50},
        u={"kind": "alpha_grid", "levels": 0, "count": 300},
    )
    n = 400
    planned = plan_models(config, n)
    masks = masks_for(config, planned, n)
    grid = planned.plan == "g"
    nodes = owen_grid(4)[0]
    assert sorted(set(planned.alpha[grid].tolist())) == sorted(
        nodes.tolist()
    )  # exactly the nodes, float64
    for node in nodes:
        rows = grid & np.isclose(planned.alpha, node, atol=1e-6)
        assert rows.sum() == 50
        assert abs(masks[rows].mean() - node) < 5 * np.sqrt(node * (1 - node) / (50 * n))
    uniform = planned.alpha[planned.plan == "u"]
    assert uniform.min() > 0 and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.05
    fractions = masks[planned.plan == "u"].mean(1)
    assert np.corrcoef(fractions, uniform)[0, 1] > 0.99


def test_loo_masks_leave_out_one_point_each():
    config = _config(loo={"kind": "loo", "points": [3, 7], "seeds": 2})
    planned = plan_models(config, 10)
    masks = masks_for(config, planned, 10)
    assert len(planned) == 6  # full + 2 left-out, 2 seeds each
    assert masks[:2].all()
    assert (~masks[2:4]).sum(1).tolist() == [1, 1] and not masks[2:4, 3].any()
    assert not masks[4:6, 7].any() and masks[4:6].sum() == 18
    all_points = _config(loo={"kind": "loo"})
    assert len(plan_models(all_points, 10)) == 11


def test_tmc_prefixes_follow_one_permutation():
    from datamodels.estimators import tmc_permutation

    config = _config(t={"kind": "tmc", "count": 2})
    n = 6
    planned = plan_models(config, n)
    assert len(planned) == 2 * (n + 1)
    masks = masks_for(config, planned, n)
    order = tmc_permutation(config.seed, 1, n)
    walk = masks[n + 1 :]
    assert walk.sum(1).tolist() == list(range(n + 1))
    for step in range(1, n + 1):
        added = np.flatnonzero(walk[step] & ~walk[step - 1])
        assert added.tolist() == [order[step - 1]]


def test_vectorised_training_seeds_equal_numpy_seed_sequence():
    from datamodels.plans import training_seed, training_seeds

    rng = np.random.default_rng(3)
    for config_seed in (0, 1, 987_654, 2**32 - 1, 2**40):  # the last one takes the loop
        mask_index = rng.integers(0, 2**31, size=200)
        replicate = rng.integers(0, 8, size=200)
        pairs = zip(mask_index.tolist(), replicate.tolist(), strict=True)
        want = [training_seed(config_seed, "eval", j, r) for j, r in pairs]
        assert training_seeds(config_seed, "eval", mask_index, replicate).tolist() == want


def _digest(*arrays) -> str:
    import hashlib

    digest = hashlib.sha256()
    for a in map(np.asarray, arrays):
        digest.update(str(a.dtype).encode())
        raw = "|".join(a.tolist()).encode() if a.dtype.kind == "U" else a.tobytes()
        digest.update(raw)
    return digest.hexdigest()[:16]


def test_every_kind_draws_the_pinned_models_masks_and_weights():
    """Ids, alphas, seeds, masks and weights of one plan of every kind, pinned (the values
    the single-module plans.py drew before the kinds became a registry)."""
    from datamodels.plans import checkpoint_ids, stored_plans, tmc_walk_state, training_weights

    config = config_from_dict({"seed": 7, "model": {"arch": "mlp"},
                               "resources": {"trainer": "batched"}, "plans": [
        {"name": "a", "count": 5, "seeds": 2, "alpha": 0.3},
        {"name": "g", "kind": "alpha_grid", "levels": 3, "count": 4},
        {"name": "u", "kind": "alpha_grid", "levels": 0, "count": 6},
        {"name": "l", "kind": "loo", "points": [1, 5, 7]},
        {"name": "t", "kind": "tmc", "count": 2, "seeds": 2},
        {"name": "s", "kind": "single_model", "count": 2, "drops": [0.1, 0.3], "seeds": 2},
        {"name": "st", "kind": "stored", "count": 3},
        {"name": "r", "kind": "removal", "count": 2, "ks": [1, 2],
         "methods": ["datamodels", "trak"]},
    ], "checkpoints": {"plan": "a", "models": 3}})
    n = 20
    p = plan_models(config, n)
    assert len(p) == 142
    assert _digest(p.model_id, p.plan, p.alpha, p.seed, p.mask_index) == "0dbba16774abf9cf"
    n_removal = int((p.plan == "r").sum())
    stored = {"st": [np.array([0, 1]), np.array([], dtype=np.int64), np.array([19])],
              "r": [np.array([i % n]) for i in range(n_removal)]}
    masks = masks_for(config, p, n, stored)
    assert _digest(masks) == "4c21b862951f82ae"
    assert _digest(*training_weights(config, p, masks)) == "ad14bedea5976a32"
    assert checkpoint_ids(config, p).tolist() == [0, 1, 2]
    assert stored_plans(config) == ["st", "r"]
    walked = {int(p.model_id[p.plan == "t"][3])}
    assert tmc_walk_state(config, p, n, walked) == {("t", 0): (32, True), ("t", 1): (74, False)}
