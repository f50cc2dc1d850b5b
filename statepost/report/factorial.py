"""The states x signals factorial: effects as linear contrasts of per-item scores, with the verdicts' statistics.

Each cell of the design is a run; its per-item scores on a benchmark form a ``seeds x items`` array (every cell has
the same seeds and every model is scored on the same items). An effect is a contrast ``sum_c w_c X_c`` with weights
that sum to 0, so the base model cancels and an effect on the scores is the same effect on the changes against base.
Its standard error is the verdicts' (:func:`.statistics.paired_change` of the contrast against 0): the seed term over
the per-seed contrasts and the item term over the per-item contrasts averaged over seeds, with Satterthwaite degrees
of freedom. A cell's seed ``s`` pairs with every other cell's seed ``s``: one seed's runs share their init draw and
data order, whatever the design.

In the 2 x 2 grid (state source dataset / learner, signal NLL / teacher KL), with the cells' means ``DN, DK, LN, LK``:

* state source: ``(LN + LK)/2 - (DN + DK)/2`` (learner states minus dataset states, averaged over the signals);
* signal: ``(DK + LK)/2 - (DN + LN)/2`` (teacher KL minus NLL, averaged over the state sources);
* interaction: ``(LK - DK) - (LN - DN)`` (how much more the learner's states help under teacher KL than under NLL).

Over the on-policy fraction ``lambda`` of a mixed state source, the dose-response slope is the least-squares slope of
score on ``lambda``, also a contrast: ``w_j = (lambda_j - mean) / sum (lambda - mean)**2``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .statistics import paired_change

STATE, SIGNAL = ("dataset", "learner"), ("nll", "teacher_kl")
GRID_EFFECTS = {  # effect -> {(state source, signal): weight}
    "state source": {("learner", "nll"): 0.5, ("learner", "teacher_kl"): 0.5,
                     ("dataset", "nll"): -0.5, ("dataset", "teacher_kl"): -0.5},
    "signal": {("dataset", "teacher_kl"): 0.5, ("learner", "teacher_kl"): 0.5,
               ("dataset", "nll"): -0.5, ("learner", "nll"): -0.5},
    "interaction": {("learner", "teacher_kl"): 1.0, ("dataset", "teacher_kl"): -1.0,
                    ("learner", "nll"): -1.0, ("dataset", "nll"): 1.0},
}  # fmt: skip


def contrast(cells: Mapping, weights: Mapping) -> dict:
    """``sum_c w_c X_c`` over ``cells`` (``{cell: seeds x items}``, the same shape each) with its paired standard
    error: :func:`.statistics.paired_change` of the combination against 0 (``delta``, ``seed_sem``, ``item_se``,
    ``uncertainty``, ``df``). The weights must sum to 0: a contrast, free of what every cell shares."""
    if not np.isclose(sum(weights.values()), 0.0):
        raise ValueError(f"contrast: weights {dict(weights)} sum to {sum(weights.values())}, not 0")
    missing = [c for c in weights if c not in cells]
    if missing:
        raise ValueError(f"contrast: no scores for {missing}")
    arrays = {c: np.asarray(cells[c], dtype=float) for c in weights}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"contrast: cells differ in shape (seeds x items): { {c: a.shape for c, a in arrays.items()} }")
    combo = sum(w * arrays[c] for c, w in weights.items())
    return paired_change(combo, np.zeros_like(combo))


def slope_weights(doses: Mapping) -> dict:
    """``{cell: dose}`` -> the least-squares slope's weights ``(dose - mean) / sum (dose - mean)**2``."""
    x = np.asarray(list(doses.values()), dtype=float)
    centred = x - x.mean()
    ss = float(centred @ centred)
    if ss == 0:
        raise ValueError(f"slope_weights: the doses {list(x)} do not vary")
    return {c: float(v / ss) for c, v in zip(doses, centred)}
