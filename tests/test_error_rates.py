"""The decision rule's error rates, by simulation: synthetic per-item scores with known effects go through the
report's own statistics (``paired_change`` and ``verdicts``), and the observed rates of false verdicts match the
ones results/README.md states ("Verdicts and their error rates") within their Monte Carlo error.

The scores: per item ``i`` and training seed ``s``, ``base_i ~ N(0, 1)`` and a run's score ``base_i + effect + h_i +
u_s + e_si``, with ``h_i`` an item's own effect (the items are a sample), ``u_s`` a seed's (the seeds are a
sample, and here the larger term: three seeds, as the toy and the paper config run) and ``e_si`` noise. The true
change is ``effect``.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from statepost import benchmarks as bench_facts
from statepost.config import load_claims
from statepost.report.claims import verdicts
from statepost.report.statistics import paired_change

ALPHA = 0.025
REPLICATES = 3000
MC_SE = math.sqrt(ALPHA * (1 - ALPHA) / REPLICATES)  # 0.0029
ITEMS = 200
SD = {"seed": 0.15, "item": 0.3, "noise": 0.3}  # with 3 seeds: seed sem about 0.087 against item se 0.024
BALANCED = {"seed": 0.04, "item": 0.3, "noise": 0.3}  # with 3 seeds: seed sem 0.025, item se 0.024
FLEX = "exact_match,flexible-extract"
ROLES = {"mild": "sft_mild", "stress": "sft_stress", "opd": "opd", "rl": "rl"}


def claim(*checks) -> dict:
    """A one-claim claims file, read and validated once."""
    return load_claims({"claims": [{"id": "c", "statement": "synthetic", "roles": ["rl"], "checks": list(checks)}]})


GAIN = {"quantity": "gain", "role": "rl", "op": ">", "threshold": "min_gain"}
FLEX_GUARD = {**GAIN, "metric": "flexible-extract", "threshold": "no_loss", "kind": "guard", "fails_as": "format only"}
MMLU_KEPT = {"quantity": "drop", "role": "rl", "benchmark": "mmlu", "op": "<", "threshold": "little_forgetting"}


def simulate(spec: dict, effects: dict, rng: np.random.Generator, replicates: int = REPLICATES, seeds: int = 3,
             sd: dict = SD):  # fmt: skip
    """Verdict counts over ``replicates`` worlds where rl's true change on each (benchmark, metric) is
    ``effects`` (0 where not given); also the share of worlds where the first check's t statistic passes 1.96, as
    a z-test would read it. Each change is :func:`paired_change` of the world's per-item scores."""
    counts, naive = {}, 0
    benches = list(bench_facts.BENCHMARKS.values())
    views = {None: {b.name: b.primary_metric for b in benches}}  # metric view -> the metric each benchmark is read on
    views.update({m: {**views[None], b.name: m} for b in benches for m in b.metrics})
    for _ in range(replicates):
        world = {}  # (benchmark, metric) -> (base mean, run mean, paired change)
        for bench, metric in dict.fromkeys((b, m) for v in views.values() for b, m in v.items()):
            base = rng.normal(0, 1, ITEMS)
            per_item = base + effects.get((bench, metric), 0.0) + rng.normal(0, sd["item"], ITEMS)
            runs = per_item + rng.normal(0, sd["seed"], (seeds, 1)) + rng.normal(0, sd["noise"], (seeds, ITEMS))
            world[(bench, metric)] = (base.mean(), runs.mean(), {**paired_change(runs, [base] * seeds), "paired": True})
        tables = {}
        for key, read in views.items():
            t = pd.DataFrame({
                "run": ["base", "rl"] * len(read),
                "benchmark": [b for b in read for _ in range(2)],
                "mean": [x for b, m in read.items() for x in world[(b, m)][:2]],
                "uncertainty": 0.0,
                "n_seeds": [1, seeds] * len(read),
            })  # fmt: skip
            changes = {b: world[(b, m)][2] for b, m in read.items()}
            tables[key] = (t, lambda a, b, bench, c=changes: c[bench])
        summary, changes = tables.pop(None)
        (r,) = verdicts(summary, ROLES, {"alpha": ALPHA}, claims=spec, changes=changes, metrics=tables)
        verdict = r.get("leaning", r["verdict"])  # with two seeds: what the checks say, as if three were enough
        counts[verdict] = counts.get(verdict, 0) + 1
        first = r["checks"][0]
        margin = first["value"] - first["threshold"] if first["op"] == ">" else first["threshold"] - first["value"]
        naive += margin / first["uncertainty"] > stats.norm.isf(ALPHA)
    return {k: v / replicates for k, v in counts.items()}, naive / replicates


def within_mc_error(observed: float, expected: float, n_se: float = 3.0) -> bool:
    se = math.sqrt(expected * (1 - expected) / REPLICATES)
    return abs(observed - expected) <= n_se * se


@pytest.mark.parametrize(
    "seeds, sd, stated",
    [
        (3, BALANCED, ALPHA),  # seed and item terms alike: alpha
        # the seed spread dominates, estimated from 3 seeds: about 1.5 alpha (Satterthwaite's degrees of freedom,
        # from estimated variances, run high when the seed spread happens to come out small)
        (3, SD, 0.036),
        (2, SD, 0.055),  # 2 seeds: twice alpha, so a verdict needs 3 (claims.MIN_SEEDS)
        (5, SD, 0.028),  # 5 seeds: near alpha again
    ],
)
def test_false_reproduced_at_the_boundary(seeds, sd, stated):
    """The gain is exactly at its threshold (0): "reproduced" would be false. Its rate is the stated one; a z-test
    at 1.96 on the same standard error, ignoring that a few seeds estimate it, says "reproduced" more often."""
    rates, naive = simulate(claim(GAIN), {}, np.random.default_rng(seeds), seeds=seeds, sd=sd)
    assert within_mc_error(rates.get("reproduced", 0.0), stated), rates
    if sd is SD and seeds == 3:
        assert naive > 2.5 * ALPHA, naive  # 0.078 in 20,000 worlds: what the rule before degrees of freedom did


def test_false_not_reproduced_is_at_most_alpha_with_holm():
    """Both requirements hold exactly at their thresholds (gain 0 > 0, MMLU drop 0.02 < 0.02): "not reproduced"
    would be false. Holm over the two checks keeps it at most alpha; with the two tests independent it is
    1 - (1 - alpha/2)**2 (Holm's first step at alpha/2 decides)."""
    drop = bench_facts.get("mmlu").primary_metric
    rates, _ = simulate(claim(GAIN, MMLU_KEPT), {("mmlu", drop): -0.02}, np.random.default_rng(2), sd=BALANCED)
    expected = 1 - (1 - ALPHA / 2) ** 2
    assert within_mc_error(rates.get("not reproduced", 0.0), expected), rates
    assert rates.get("not reproduced", 0.0) <= ALPHA + 3 * MC_SE


def test_format_only_when_answers_are_kept():
    """A clear strict-match gain, and flexible-extract exactly at base: "format only" would be false. The guard is
    tested by itself at alpha; the claim is reproduced otherwise."""
    rates, _ = simulate(claim(GAIN, FLEX_GUARD), {("gsm8k", bench_facts.get("gsm8k").primary_metric): 0.5},
                        np.random.default_rng(4), sd=BALANCED)  # fmt: skip
    assert within_mc_error(rates.get("format only", 0.0), ALPHA), rates
    assert rates.get("reproduced", 0.0) + rates.get("format only", 0.0) == pytest.approx(1.0)
    assert FLEX in [m for b in bench_facts.BENCHMARKS.values() for m in b.metrics]
