"""The states x signals analysis: effects as contrasts of per-item scores, their standard errors, the λ slope."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from statepost.report import factorial as FX

CELLS = [(s, g) for s in FX.STATE for g in FX.SIGNAL]


def test_grid_contrasts_by_hand():
    """One seed, two items: DN [0, 1], DK [1, 1], LN [0, 0], LK [1, 0]."""
    cells = {("dataset", "nll"): [[0, 1]], ("dataset", "teacher_kl"): [[1, 1]],
             ("learner", "nll"): [[0, 0]], ("learner", "teacher_kl"): [[1, 0]]}  # fmt: skip
    state = FX.contrast(cells, FX.GRID_EFFECTS["state source"])  # per item .5*(LN+LK) - .5*(DN+DK) = [0, -1]
    assert state["delta"] == pytest.approx(-0.5) and state["item_se"] == pytest.approx(0.5) and state["seed_sem"] == 0
    signal = FX.contrast(cells, FX.GRID_EFFECTS["signal"])  # .5*(DK+LK) - .5*(DN+LN) = [1, 0]
    assert signal["delta"] == pytest.approx(0.5) and signal["item_se"] == pytest.approx(0.5)
    inter = FX.contrast(cells, FX.GRID_EFFECTS["interaction"])  # LK - DK - LN + DN = [0, 0]
    assert inter["delta"] == 0 and inter["uncertainty"] == 0


def test_slope_weights_by_hand():
    w = FX.slope_weights({"a": 0.0, "b": 0.5, "c": 1.0})  # centred -0.5, 0, 0.5; sum of squares 0.5
    assert w == pytest.approx({"a": -1.0, "b": 0.0, "c": 1.0})
    cells = {"a": [[0.2, 0.4]], "b": [[0.3, 0.5]], "c": [[0.4, 0.6]]}  # score = 0.2 + 0.2 * dose (+ 0.2 item 2)
    assert FX.contrast(cells, w)["delta"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="do not vary"):
        FX.slope_weights({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="sum to 1.0, not 0"):
        FX.contrast(cells, {"a": 1.0})


def _simulate(rng, effects, doses=None, seeds=3, items=150, seed_sd=0.04, item_sd=0.3):
    """Per-item scores with known effects: an item's difficulty shared by every cell, a seed draw per cell and seed,
    item noise per cell, seed and item."""
    difficulty = rng.normal(0.5, 0.2, items)
    out = {}
    for cell, mean in effects.items():
        seed_draw = rng.normal(0, seed_sd, (seeds, 1))
        out[cell] = difficulty + mean + seed_draw + rng.normal(0, item_sd, (seeds, items))
    return out


@pytest.mark.parametrize("what", ["grid", "dose"])
def test_synthetic_effects_are_recovered_at_their_stated_coverage(what):
    """On synthetic scores with known effects, each estimate's 95 % t interval (its paired standard error and
    Satterthwaite df) covers the truth in 95 % of 400 draws, within Monte Carlo error (binomial, 3 sd)."""
    rng = np.random.default_rng(0)
    if what == "grid":  # state source +0.10, signal -0.04, interaction +0.06
        means = {c: 0.10 * (c[0] == "learner") - 0.04 * (c[1] == "teacher_kl") for c in CELLS}
        means[("learner", "teacher_kl")] += 0.06
        # the main effects average over the other factor: state = 0.10 + 0.06/2, signal = -0.04 + 0.06/2
        truth = {"state source": 0.13, "signal": -0.01, "interaction": 0.06}
        weights = FX.GRID_EFFECTS
    else:  # retention falls by 0.08 per unit of λ
        doses = {f"lambda{x}": x for x in (0.0, 0.25, 0.5, 0.75, 1.0)}
        means = {c: -0.08 * x for c, x in doses.items()}
        truth, weights = {"slope": -0.08}, {"slope": FX.slope_weights(doses)}
    draws = 400
    covered = {k: 0 for k in truth}
    for _ in range(draws):
        cells = _simulate(rng, means)
        for name, w in weights.items():
            est = FX.contrast(cells, w)
            half = stats.t.ppf(0.975, est["df"]) * est["uncertainty"]
            covered[name] += abs(est["delta"] - truth[name]) <= half
    mc = 3 * np.sqrt(0.95 * 0.05 / draws)
    for name, k in covered.items():
        assert abs(k / draws - 0.95) <= mc, (name, k / draws)
