"""Claim verdicts: every verdict path of every claim, through hand-made score summaries."""

import math

import pandas as pd
import pytest
from scipy import stats

from statepost.config import with_defaults
from statepost.io import ConfigError
from statepost.report.claims import check_thresholds, claims_markdown, verdicts
from statepost.report.statistics import holm, satterthwaite

# The defaults live in the config schema only; opd_teacher is resolved from the opd run's teacher (here: stress).
DEFAULT_THRESHOLDS = with_defaults({}, "claims")["thresholds"]
DEFAULT_ROLES = {**with_defaults({}, "claims")["roles"], "opd_teacher": "sft_stress"}

BENCHES = ("gsm8k", "truthfulqa_mc2", "mmlu")
FLEX = "exact_match,flexible-extract"
BASE = (0.30, 0.40, 0.50)
# A picture where every claim holds by a wide margin.
GOOD = {
    "base": BASE,
    "sft_mild": (0.40, 0.395, 0.495),  # gain 0.10, drops 0.005 and 0.005
    "sft_stress": (0.45, 0.32, 0.42),  # drops 0.08 and 0.08
    "opd": (0.48, 0.36, 0.46),  # beats stress by 0.03/0.04/0.04
    "rl": (0.36, 0.40, 0.498),  # gain 0.06, drops 0 and 0.002
}
CLAIM1 = ["sft_mild gsm8k gain", "sft_mild gsm8k gain (flexible-extract)", "sft_mild truthfulqa_mc2 drop",
          "sft_mild mmlu drop", "sft_stress truthfulqa_mc2 drop", "sft_stress mmlu drop"]  # fmt: skip
CLAIM2 = ["opd − sft_stress on gsm8k", "opd − sft_stress on truthfulqa_mc2", "opd − sft_stress on mmlu",
          "opd − sft_stress on gsm8k (flexible-extract)"]  # fmt: skip
CLAIM3 = ["rl gsm8k gain", "rl gsm8k gain (flexible-extract)", "rl truthfulqa_mc2 drop", "rl mmlu drop"]


def table(values: dict, unc: float | dict = 0.001, seeds: int = 3) -> pd.DataFrame:
    """Summary rows (run, benchmark, mean, uncertainty, n_seeds); ``unc`` may be per (run, benchmark)."""
    rows = []
    for run, vals in values.items():
        for b, v in zip(BENCHES, vals):
            u = unc.get((run, b), 0.001) if isinstance(unc, dict) else unc
            n_seeds = 1 if run == "base" else seeds
            rows.append({"run": run, "benchmark": b, "mean": v, "uncertainty": u, "n_seeds": n_seeds})
    return pd.DataFrame(rows)


def by_claim(values, unc=0.001, roles=DEFAULT_ROLES, thresholds=None, flexible=None, seeds=3, changes=None):
    """Verdicts by claim id. ``flexible``: run -> GSM8K flexible-extract (default: the strict-match value)."""
    flex = {run: ((flexible or {}).get(run, v[0]), *v[1:]) for run, v in values.items()}
    res = verdicts(table(values, unc, seeds), roles, thresholds or {}, changes=changes,
                   metrics={FLEX: (table(flex, unc, seeds), changes)})  # fmt: skip
    return {r["claim"]: r for r in res}


def with_(run, vals, base=GOOD):
    d = dict(base)
    d[run] = vals
    return d


def outcomes(r) -> dict:
    return {c["quantity"]: c["outcome"] for c in r["checks"]}


def test_all_reproduced_and_record_shape():
    res = by_claim(GOOD)
    assert [r for r in res] == ["claim1", "claim2", "claim3"]
    assert [[c["quantity"] for c in r["checks"]] for r in res.values()] == [CLAIM1, CLAIM2, CLAIM3]
    for r in res.values():
        assert r["verdict"] == "reproduced", r
        assert set(r) >= {"claim", "statement", "n_seeds", "quantities", "thresholds", "verdict", "reason"}
        assert r["n_seeds"] == 3 and "leaning" not in r
        assert r["statement"] and r["reason"]
        for q in r["quantities"].values():
            assert set(q) == {"value", "uncertainty"}
            assert math.isfinite(q["value"]) and q["uncertainty"] > 0
        assert r["thresholds"]["alpha"] == DEFAULT_THRESHOLDS["alpha"] == 0.025
    q1 = res["claim1"]["quantities"]
    assert q1["sft_mild gsm8k gain"]["value"] == pytest.approx(0.10)
    assert q1["sft_mild truthfulqa_mc2 drop"]["value"] == pytest.approx(0.005)
    assert q1["sft_stress mmlu drop"]["value"] == pytest.approx(0.08)
    assert q1["sft_mild retention drop"]["value"] == pytest.approx(0.005)  # reported, not checked
    assert q1["sft_mild gsm8k gain"]["uncertainty"] == pytest.approx(math.sqrt(2) * 0.001)
    # mean of two changes: sqrt(2 * (2 u^2)) / 2 = u
    assert q1["sft_mild retention drop"]["uncertainty"] == pytest.approx(0.001)
    q2 = res["claim2"]["quantities"]
    assert [v["value"] for v in q2.values()] == pytest.approx([0.03, 0.04, 0.04, 0.03])
    assert set(res["claim1"]["thresholds"]) == {"min_gain", "no_loss", "little_forgetting", "substantial_loss", "alpha"}
    assert set(res["claim2"]["thresholds"]) == {"surpass_margin", "no_loss", "alpha"}
    check = res["claim3"]["checks"][0]
    assert check["kind"] == "check" and res["claim3"]["checks"][1]["kind"] == "guard"
    assert check["df"] is None  # no per-item scores: lm-eval's standard errors, taken as exact
    assert check["p_holds"] == pytest.approx(stats.norm.sf(0.06 / (math.sqrt(2) * 0.001)))
    assert check["p_holds"] + check["p_violated"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ the decision rule


def test_holm_by_hand():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop
    assert holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    assert holm([0.02, 0.02], 0.05) == [True, True]  # 0.02 <= 0.025, then 0.02 <= 0.05
    assert holm([0.03, 0.2], 0.05) == [False, False]  # 0.03 > 0.025: nothing rejected
    assert holm([], 0.05) == []


def test_satterthwaite_by_hand():
    # (0.03^2 + 0.04^2)^2 / (0.03^4 / 2 + 0.04^4 / 99) = 6.25e-6 / 4.30859e-7
    assert satterthwaite((0.03, 2), (0.04, 99)) == pytest.approx(14.5059, rel=1e-4)
    assert satterthwaite((0.03, 2)) == pytest.approx(2.0)
    assert satterthwaite((0.03, float("inf")), (0.0, 2)) == float("inf")
    assert satterthwaite((float("nan"), 4), (0.02, 9)) == pytest.approx(9.0)


def test_few_degrees_of_freedom_widen_the_critical_value():
    """A 3.33-se gain passes against the normal (p = 0.0004) but not against t with 2 degrees of freedom (p = 0.040),
    the reading of a gain whose standard error is mostly the spread over three seeds."""

    def changes(df):
        return lambda a, b, bench: {"uncertainty": 0.03, "paired": True, "df": df}

    vals = with_("rl", (0.40, 0.40, 0.50))
    many = by_claim(vals, changes=changes(float("inf")))["claim3"]["checks"][0]
    few = by_claim(vals, changes=changes(2.0))["claim3"]["checks"][0]
    assert many["outcome"] == "pass" and many["p_holds"] == pytest.approx(stats.norm.sf(0.1 / 0.03))
    assert few["outcome"] == "uncertain" and few["p_holds"] == pytest.approx(stats.t.sf(0.1 / 0.03, 2))
    assert few["df"] == 2.0
    # 80% power: the true gain that passes with probability 0.8 is (t_{1-alpha} + t_{0.8}) se beyond the threshold
    assert few["decidable_at"] == pytest.approx((stats.t.isf(0.025, 2) + stats.t.isf(0.2, 2)) * 0.03)


def test_one_seed_is_provisional():
    res = by_claim(GOOD, seeds=1)
    for r in res.values():
        assert r["verdict"] == "provisional (1 seed)" and r["leaning"] == "reproduced" and r["n_seeds"] == 1
        assert "seeds: [0, 1, 2]" in r["reason"]
    md = claims_markdown(list(res.values()))
    assert "**provisional (1 seed)** (the checks alone: reproduced), on 1 training seed" in md
    # a claim rests on the fewest seeds of its runs: claim 2 on opd's and its teacher's
    t = table(GOOD).assign(n_seeds=lambda d: d["run"].map({"opd": 1}).fillna(d["n_seeds"]).astype(int))
    flex = {FLEX: (t, None)}
    assert [r["verdict"] for r in verdicts(t, DEFAULT_ROLES, {}, metrics=flex)] == [
        "reproduced", "provisional (1 seed)", "reproduced"]  # fmt: skip


# ------------------------------------------------------------------------------------------ claim 1


@pytest.mark.parametrize(
    "run, vals, failing",
    [
        ("sft_mild", (0.29, 0.395, 0.495), CLAIM1[:2]),  # mild does not improve GSM8K (either metric)
        ("sft_mild", (0.40, 0.35, 0.46), CLAIM1[2:4]),  # mild forgets (drops 0.045 and 0.035)
        ("sft_mild", (0.40, 0.395, 0.46), CLAIM1[3:4]),  # mild forgets MMLU only
        ("sft_stress", (0.45, 0.39, 0.49), CLAIM1[4:]),  # stress barely forgets (drops 0.01)
        # stress loses 0.10 on TruthfulQA but 0.03 on MMLU: the mean (0.065) is above 0.05, yet the claim says
        # "substantial loss on TruthfulQA mc2 and MMLU"
        ("sft_stress", (0.45, 0.30, 0.47), CLAIM1[5:]),
    ],
)
def test_claim1_each_part_failing_alone(run, vals, failing):
    r = by_claim(with_(run, vals))["claim1"]
    assert r["verdict"] == "not reproduced"
    assert [q for q, o in outcomes(r).items() if o == "fail"] == failing
    assert all(o == "pass" for q, o in outcomes(r).items() if q not in failing)
    assert all(q in r["reason"] for q in failing)


def test_claim1_parts_are_labelled():
    r = by_claim(GOOD)["claim1"]
    assert [c["part"] for c in r["checks"]] == ["mild"] * 4 + ["stress"] * 2


@pytest.mark.parametrize(
    "run, vals, unc, undecided",
    [
        # mild's TruthfulQA drop 0.015 vs 0.02, standard error 0.007 -> within 1.96 se
        ("sft_mild", (0.40, 0.385, 0.495), {("sft_mild", "truthfulqa_mc2"): 0.007}, CLAIM1[2]),
        # stress's MMLU drop 0.055 vs 0.05
        ("sft_stress", (0.45, 0.32, 0.445), {("sft_stress", "mmlu"): 0.01}, CLAIM1[5]),
        # mild's gain 0.01 vs 0 with a noisy GSM8K (its flexible-extract guard is not violated)
        ("sft_mild", (0.31, 0.395, 0.495), {("sft_mild", "gsm8k"): 0.02}, CLAIM1[0]),
    ],
)
def test_claim1_inconclusive(run, vals, unc, undecided):
    r = by_claim(with_(run, vals), unc)["claim1"]
    assert r["verdict"] == "inconclusive", r["reason"]
    assert [q for q, o in outcomes(r).items() if o == "uncertain"] == [undecided]
    assert "hinges" in r["reason"]


def test_claim1_fail_beats_uncertain():
    vals = with_("sft_mild", (0.31, 0.395, 0.495))  # uncertain gain
    vals["sft_stress"] = (0.45, 0.39, 0.49)  # clear failure
    r = by_claim(vals, {("sft_mild", "gsm8k"): 0.02})["claim1"]
    assert r["verdict"] == "not reproduced"
    assert list(outcomes(r).values()) == ["uncertain", "pass", "pass", "pass", "fail", "fail"]


@pytest.mark.parametrize("missing", ["sft_mild", "sft_stress", "base"])
def test_claim1_not_run(missing):
    vals = {k: v for k, v in GOOD.items() if k != missing}
    res = by_claim(vals)
    assert res["claim1"]["verdict"] == "not run"
    assert missing in res["claim1"]["reason"]
    assert res["claim1"]["quantities"] == {}
    # claim 2 needs no base
    assert res["claim2"]["verdict"] == ("not run" if missing == "sft_stress" else "reproduced")


def test_not_run_when_role_unassigned_or_benchmark_or_metric_missing():
    roles = {k: v for k, v in DEFAULT_ROLES.items() if k != "mild"}
    assert by_claim(GOOD, roles=roles)["claim1"]["verdict"] == "not run"
    assert "role 'mild'" in by_claim(GOOD, roles=roles)["claim1"]["reason"]
    t = table(GOOD)
    t = t[~((t["run"] == "rl") & (t["benchmark"] == "mmlu"))]
    r = {x["claim"]: x for x in verdicts(t, DEFAULT_ROLES, {}, metrics={FLEX: (t, None)})}["claim3"]
    assert r["verdict"] == "not run" and "mmlu" in r["reason"]
    # no flexible-extract scores: the checks that read them cannot be judged
    r = {x["claim"]: x for x in verdicts(table(GOOD), DEFAULT_ROLES, {})}["claim3"]
    assert r["verdict"] == "not run" and "gsm8k flexible-extract" in r["reason"]


# ------------------------------------------------------------------------------------------ format only


def test_a_strict_gain_with_fewer_answers_right_is_format_only():
    """RL learns to write "#### N" (strict-match +0.06) while solving fewer problems (flexible-extract −0.10)."""
    r = by_claim(GOOD, flexible={"base": 0.50, "rl": 0.40})["claim3"]
    assert r["verdict"] == "format only"
    assert list(outcomes(r).values()) == ["pass", "fail", "pass", "pass"]
    assert "rl gsm8k gain (flexible-extract) = -0.100" in r["reason"]
    md = claims_markdown([r])
    assert "**format only**" in md and "not significantly < 0 (no_loss)" in md
    # a flexible loss within noise does not count against the strict gain
    r = by_claim(GOOD, flexible={"base": 0.50, "rl": 0.499}, unc={("rl", "gsm8k"): 0.01})["claim3"]
    assert r["verdict"] == "reproduced" and outcomes(r)["rl gsm8k gain (flexible-extract)"] == "pass"
    # no strict gain either: not reproduced; an undecided strict gain with a flexible loss: not reproduced too
    assert by_claim(with_("rl", (0.28, 0.40, 0.498)), flexible={"rl": 0.20})["claim3"]["verdict"] == "not reproduced"
    noisy = by_claim(with_("rl", (0.31, 0.40, 0.498)), {("rl", "gsm8k"): 0.02}, flexible={"base": 0.5, "rl": 0.3})
    assert noisy["claim3"]["verdict"] == "not reproduced"


def test_claim2_format_only_and_the_guard_threshold():
    r = by_claim(GOOD, flexible={"opd": 0.40, "sft_stress": 0.45})["claim2"]
    assert r["verdict"] == "format only" and outcomes(r)[CLAIM2[3]] == "fail"
    # no_loss: -0.1 tolerates a 10-point flexible loss
    r = by_claim(GOOD, flexible={"opd": 0.40, "sft_stress": 0.45}, thresholds={"no_loss": -0.1})["claim2"]
    assert r["verdict"] == "reproduced"


# ------------------------------------------------------------------------------------------ claim 2


def test_claim2_not_reproduced_when_one_benchmark_loses():
    r = by_claim(with_("opd", (0.48, 0.36, 0.40)))["claim2"]  # MMLU below teacher (0.42)
    assert r["verdict"] == "not reproduced"
    assert list(outcomes(r).values()) == ["pass", "pass", "fail", "pass"]
    assert "mmlu" in r["reason"]


def test_claim2_inconclusive():
    r = by_claim(with_("opd", (0.455, 0.36, 0.46)), {("opd", "gsm8k"): 0.01})["claim2"]
    assert r["verdict"] == "inconclusive"
    assert list(outcomes(r).values()) == ["uncertain", "pass", "pass", "pass"]


def test_claim2_margin_threshold():
    r = by_claim(GOOD, thresholds={"surpass_margin": 0.035})["claim2"]
    assert r["verdict"] == "not reproduced"  # gsm8k margin is 0.03
    assert r["thresholds"]["surpass_margin"] == 0.035


@pytest.mark.parametrize("missing", ["opd", "sft_stress"])
def test_claim2_not_run(missing):
    vals = {k: v for k, v in GOOD.items() if k != missing}
    r = by_claim(vals)["claim2"]
    assert r["verdict"] == "not run" and missing in r["reason"]


def test_claim2_uses_opd_teacher_role():
    vals = dict(GOOD, other_teacher=(0.50, 0.50, 0.50))
    roles = dict(DEFAULT_ROLES, opd_teacher="other_teacher")
    r = by_claim(vals, roles=roles)["claim2"]
    assert r["verdict"] == "not reproduced"
    assert all("other_teacher" in q for q in r["quantities"])


# ------------------------------------------------------------------------------------------ claim 3


@pytest.mark.parametrize(
    "vals, unc, verdict, expected",
    [
        ((0.36, 0.40, 0.498), 0.001, "reproduced", ["pass", "pass", "pass", "pass"]),
        ((0.28, 0.40, 0.498), 0.001, "not reproduced", ["fail", "fail", "pass", "pass"]),  # GSM8K falls
        ((0.36, 0.35, 0.45), 0.001, "not reproduced", ["pass", "pass", "fail", "fail"]),  # forgets 0.05
        ((0.31, 0.40, 0.498), {("rl", "gsm8k"): 0.02}, "inconclusive", ["uncertain", "pass", "pass", "pass"]),
        ((0.30, 0.40, 0.498), 0.001, "inconclusive", ["uncertain", "pass", "pass", "pass"]),  # zero gain
        # MMLU drop 0.02 at its threshold
        ((0.36, 0.40, 0.48), {("rl", "mmlu"): 0.01}, "inconclusive", ["pass", "pass", "pass", "uncertain"]),
    ],
)
def test_claim3_paths(vals, unc, verdict, expected):
    r = by_claim(with_("rl", vals), unc)["claim3"]
    assert r["verdict"] == verdict, r["reason"]
    assert list(outcomes(r).values()) == expected


def test_claim3_not_run():
    vals = {k: v for k, v in GOOD.items() if k != "rl"}
    r = by_claim(vals)["claim3"]
    assert r["verdict"] == "not run" and "'rl'" in r["reason"]


# ------------------------------------------------------------------------------------------ thresholds


def test_alpha_sets_the_level():
    vals, unc = with_("rl", (0.31, 0.40, 0.498)), {("rl", "gsm8k"): 0.006}  # gain 0.01, se 0.0061: p = 0.050
    assert by_claim(vals, unc)["claim3"]["verdict"] == "inconclusive"
    assert by_claim(vals, unc, thresholds={"alpha": 0.1})["claim3"]["verdict"] == "reproduced"


def test_min_gain_threshold():
    r = by_claim(GOOD, thresholds={"min_gain": 0.07})["claim3"]  # RL gains 0.06
    assert r["verdict"] == "not reproduced"


def test_missing_uncertainty_uses_point_estimate():
    unc = {("rl", b): float("nan") for b in BENCHES} | {("base", b): float("nan") for b in BENCHES}
    r = by_claim(with_("rl", (0.3001, 0.40, 0.50)), unc)["claim3"]
    assert r["verdict"] == "reproduced"
    assert r["quantities"]["rl gsm8k gain"]["uncertainty"] is None


def test_thresholds_validation():
    assert check_thresholds(None) == DEFAULT_THRESHOLDS
    assert check_thresholds({"alpha": 0.05})["alpha"] == 0.05
    with pytest.raises(ConfigError, match="claims.thresholds.little_forgeting"):
        check_thresholds({"little_forgeting": 0.1})
    with pytest.raises(ConfigError, match="alpha"):
        check_thresholds({"alpha": "two"})
    with pytest.raises(ConfigError, match=r"claims.thresholds.alpha: must be in \(0, 0.5\)"):
        check_thresholds({"alpha": 0.5})
    with pytest.raises(ConfigError, match="claims.thresholds.z: replaced by alpha"):
        check_thresholds({"z": 1.96})
    with pytest.raises(ConfigError):
        verdicts(table(GOOD), DEFAULT_ROLES, {"bogus": 1})


def test_verdicts_is_pure():
    t = table(GOOD)
    before = t.copy()
    a = verdicts(t, DEFAULT_ROLES, {}, metrics={FLEX: (t, None)})
    b = verdicts(t, DEFAULT_ROLES, {}, metrics={FLEX: (t, None)})
    pd.testing.assert_frame_equal(t, before)
    assert a == b


def test_markdown_has_a_table_per_claim_and_bold_verdicts():
    res = list(by_claim(with_("rl", (0.28, 0.40, 0.498))).values())
    md = claims_markdown(res, DEFAULT_ROLES)
    assert md.count("## claim") == 3
    assert "**reproduced**" in md and "**not reproduced**" in md
    assert md.count("| check") == 3
    header = next(x for x in md.splitlines() if x.startswith("| check"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "check", "value", "± (1 se)", "df", "requirement", "p holds / violated", "80% power", "outcome"]  # fmt: skip
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in md.splitlines() if x.startswith("| ")]
    cells = next(r for r in rows if r[0] == "sft_mild gsm8k gain")
    # gain 0.10 ± 0.0014 on infinite df: 80% power at (1.96 + 0.84) * 0.0014 = +0.004
    assert cells[:5] == ["sft_mild gsm8k gain", "+0.1000", "0.0014", "∞", "> 0 (min_gain)"]
    assert cells[6:] == ["> +0.004", "pass"]
    assert "Holm" in md and "on 3 training seeds" in md
    res = list(by_claim({k: v for k, v in GOOD.items() if k != "opd"}).values())
    assert "**not run**" in claims_markdown(res)


# ------------------------------------------------------------------------------------------ claims as data

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from statepost.config import CLAIMS_SCHEMA_PATH as SCHEMA_PATH  # noqa: E402
from statepost.config import load_claims  # noqa: E402
from statepost.report.claims import QUANTITIES, resolve_roles  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLAIMS_FILE = ROOT / "config" / "claims.yaml"
FOURTH = {
    "id": "claim4",
    "statement": "Mild SFT keeps MMLU within little_forgetting of base.",
    "roles": ["mild"],
    "checks": [{"quantity": "drop", "role": "mild", "benchmark": "mmlu", "op": "<", "threshold": "little_forgetting"}],
    "reports": [{"quantity": "difference", "roles": ["mild", "base"], "benchmark": "each"}],
}


def claims_file(tmp_path, edit) -> Path:
    """The repository's claims file, changed by ``edit(raw)``, written under tmp_path."""
    raw = yaml.safe_load(CLAIMS_FILE.read_text())
    edit(raw)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def test_the_config_names_the_claims_file():
    defaults = with_defaults({}, "claims")
    assert defaults["definitions"] == "config/claims.yaml" and (ROOT / defaults["definitions"]).is_file()
    spec = load_claims()
    assert [c["id"] for c in spec["claims"]] == ["claim1", "claim2", "claim3"]
    assert spec["derived_roles"] == {"opd_teacher": {"teacher_of": "opd"}}
    # the claims' thresholds and roles are config keys; the defaults are the schema's alone
    import statepost.report as R

    for gone in ("DEFAULT_THRESHOLDS", "DEFAULT_ROLES", "CLAIMS", "BENCHMARKS", "PRIMARY_METRIC", "TARGET"):
        assert not hasattr(R, gone), gone


def test_schema_vocabulary_is_the_interpreters():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert set(schema["$defs"]["quantity"]["properties"]["quantity"]["enum"]) == set(QUANTITIES)


def test_a_fourth_claim_in_yaml_only(tmp_path):
    path = claims_file(tmp_path, lambda raw: raw["claims"].append(FOURTH))
    spec = load_claims(path)
    flex = {FLEX: (table(GOOD), None)}
    res = {r["claim"]: r for r in verdicts(table(GOOD), DEFAULT_ROLES, {}, claims=spec, metrics=flex)}
    assert list(res) == ["claim1", "claim2", "claim3", "claim4"]
    assert [res[c]["verdict"] for c in ("claim1", "claim2", "claim3")] == ["reproduced"] * 3
    r = res["claim4"]
    assert r["verdict"] == "reproduced" and r["statement"] == FOURTH["statement"]
    assert [c["quantity"] for c in r["checks"]] == ["sft_mild mmlu drop"]
    assert r["checks"][0]["value"] == pytest.approx(0.005) and r["checks"][0]["uncertainty"] == pytest.approx(
        math.sqrt(2) * 0.001
    )
    assert r["thresholds"] == {"little_forgetting": 0.02, "alpha": 0.025}
    # reported, not checked: mild − base on every benchmark, target first
    assert [(k, v["value"]) for k, v in r["quantities"].items() if k != "sft_mild mmlu drop"] == [
        ("sft_mild − base on gsm8k", pytest.approx(0.10)),
        ("sft_mild − base on truthfulqa_mc2", pytest.approx(-0.005)),
        ("sft_mild − base on mmlu", pytest.approx(-0.005)),
    ]
    md = claims_markdown(list(res.values()), DEFAULT_ROLES)
    assert "## claim4: Mild SFT keeps MMLU" in md and "Also: sft_mild − base on gsm8k = +0.1000" in md
    # the same claim, now failing; and "not run" without base (drop reads base)
    forgets = verdicts(table(with_("sft_mild", (0.40, 0.395, 0.45))), DEFAULT_ROLES, {}, claims=spec, metrics=flex)
    assert forgets[3]["verdict"] == "not reproduced" and "sft_mild mmlu drop = +0.050" in forgets[3]["reason"]
    no_base = verdicts(table({k: v for k, v in GOOD.items() if k != "base"}), DEFAULT_ROLES, {}, claims=spec)
    assert no_base[3]["verdict"] == "not run" and "base" in no_base[3]["reason"]


def test_changing_a_claim_in_yaml(tmp_path):
    """claim3 with a stricter requirement: RL must gain on every benchmark, not only GSM8K."""

    def edit(raw):
        raw["claims"][2]["checks"][0] = {"quantity": "gain", "role": "rl", "benchmark": "each", "op": ">",
                                         "threshold": "min_gain"}  # fmt: skip

    spec = load_claims(claims_file(tmp_path, edit))
    vals = with_("rl", (0.36, 0.40, 0.49))
    r = verdicts(table(vals), DEFAULT_ROLES, {}, claims=spec, metrics={FLEX: (table(vals), None)})[2]
    assert [c["quantity"] for c in r["checks"]] == ["rl gsm8k gain", "rl truthfulqa_mc2 gain", "rl mmlu gain",
                                                    *CLAIM3[1:]]  # fmt: skip
    assert [c["outcome"] for c in r["checks"]] == ["pass", "uncertain", "fail", "pass", "pass", "pass"]
    assert r["verdict"] == "not reproduced" and "rl mmlu gain = -0.010" in r["reason"]
    # with the file as it is, the same scores reproduce claim 3 (GSM8K gain and little forgetting)
    assert by_claim(vals)["claim3"]["verdict"] == "reproduced"


BAD = [
    # (edit, the key path the error names, words of the message)
    (lambda raw: raw["claims"][0]["checks"][1].update(op=">="), "claims.0.checks.1.op (claim claim1)", "'>='"),
    (lambda raw: raw["claims"][1]["checks"][0].update(threshold="surpass"), "claims.1.checks.0.threshold", "surpass"),
    (lambda raw: raw["claims"][2].update(roles=["rl", "rll"]), "claims.2.roles.1", "unknown role 'rll'"),
    (lambda raw: raw["claims"][2]["checks"][0].update(role="mild"), "claims.2.checks.0", "'mild' is not among"),
    (lambda raw: raw["claims"][1].pop("statement"), "claims.1.statement", "required"),
    (lambda raw: raw["claims"][1]["checks"][0].pop("benchmark"), "claims.1.checks.0.benchmark", "required"),
    (lambda raw: raw["claims"][0]["checks"][0].update(benchmark="gsm9k"), "claims.0.checks.0.benchmark", "gsm9k"),
    (lambda raw: raw["claims"][0]["reports"][0].update(op=">"), "claims.0.reports.0", "'op' was unexpected"),
    (lambda raw: raw["claims"][0]["checks"][0].update(quantity="gains"), "claims.0.checks.0.quantity", "'gains'"),
    (lambda raw: raw["claims"][2].update(id="claim1"), "claims.2.id", "duplicate"),
    (lambda raw: raw["derived_roles"]["opd_teacher"].update(teacher_of="od"), "derived_roles.opd_teacher.teacher_of",
     "unknown role 'od'"),
    (lambda raw: raw.update(claim=[]), "claim", "unexpected"),
    (lambda raw: raw["claims"][2]["checks"][2].update(metric="flexible-extract"), "claims.2.checks.2.metric",
     "'flexible-extract' is not a metric of truthfulqa_mc2, mmlu"),
    (lambda raw: raw["claims"][2]["checks"][0].update(fails_as="oops"), "claims.2.checks.0", "kind"),
    (lambda raw: raw["claims"][2]["checks"][1].update(kind="gaurd"), "claims.2.checks.1.kind", "'gaurd'"),
]  # fmt: skip


@pytest.mark.parametrize("edit, key, words", BAD)
def test_a_malformed_claims_file_names_the_file_and_key(tmp_path, edit, key, words):
    path = claims_file(tmp_path, edit)
    with pytest.raises(ConfigError) as e:
        load_claims(path)
    assert str(e.value).startswith(f"{path}: {key}"), str(e.value)
    assert words in str(e.value)
    with pytest.raises(ConfigError, match="claims.yaml"):
        verdicts(table(GOOD), DEFAULT_ROLES, {}, claims=path)


def test_claims_file_not_yaml_or_missing(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("claims: [\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_claims(path)
    with pytest.raises(ConfigError, match="nothere.yaml: cannot read"):
        load_claims(tmp_path / "nothere.yaml")


def test_opd_teacher_is_the_opd_runs_teacher():
    models = [
        {"name": "base", "run": "base", "seed": None},
        {"name": "opd/seed0", "run": "opd", "seed": 0, "teacher": "sft_mild/seed0", "signal": "teacher_kl"},
    ]
    roles = resolve_roles(models, {})
    assert roles == {**with_defaults({}, "claims")["roles"], "opd_teacher": "sft_mild"}
    # no teacher named: the role stays unassigned (no guess), and claim 2 says so
    models[1]["teacher"] = None
    roles = resolve_roles(models, {})
    assert "opd_teacher" not in roles
    r = by_claim(GOOD, roles=roles)["claim2"]
    assert r["verdict"] == "not run" and "role 'opd_teacher'" in r["reason"]


def test_claims_file_reads_without_pandas():
    import subprocess
    import sys

    code = (
        "import sys\nfrom statepost.config import load_claims\nload_claims()\n"
        "print(sorted(m for m in ('pandas', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr


# ------------------------------------------------------------------------------------------ other metrics

from statepost import benchmarks as bench_facts  # noqa: E402
from statepost.report.statistics import metric_summaries, summarize  # noqa: E402


def scores_frame(values: dict, flexible: dict) -> pd.DataFrame:
    """Score rows as load_scores gives them (three identical seeds a trained run): every benchmark's primary
    metric, and GSM8K's flexible-extract."""
    rows = []
    for run, vals in values.items():
        for seed in [None] if run == "base" else [0, 1, 2]:
            model = dict(model=run if seed is None else f"{run}/seed{seed}", run=run, seed=seed, n=100)
            for b, v in zip(BENCHES, vals):
                rows.append({**model, "benchmark": b, "metric": bench_facts.get(b).primary_metric, "value": v,
                             "stderr": 0.001, "primary": True})  # fmt: skip
            rows.append({**model, "benchmark": "gsm8k", "metric": FLEX, "value": flexible[run], "stderr": 0.002,
                         "primary": False})  # fmt: skip
    return pd.DataFrame(rows)


def test_checks_read_the_metric_they_name():
    flexible = {"base": 0.50, "sft_mild": 0.55, "sft_stress": 0.40, "opd": 0.30, "rl": 0.45}
    scores = scores_frame(GOOD, flexible)
    runs = list(GOOD)
    others = {m: (s, None) for m, s in metric_summaries(scores, runs).items()}
    assert list(others) == [FLEX]
    res = {r["claim"]: r for r in verdicts(summarize(scores, runs=runs), DEFAULT_ROLES, {}, metrics=others)}
    # rl gains 0.06 on strict-match and loses 0.05 on flexible-extract; opd beats its teacher on strict-match
    # (+0.03) and loses 0.10 on flexible-extract; mild gains on both
    assert [r["verdict"] for r in res.values()] == ["reproduced", "format only", "format only"]
    checks = {c["quantity"]: c for c in res["claim3"]["checks"]}
    assert checks["rl gsm8k gain"]["value"] == pytest.approx(0.06)
    assert checks["rl gsm8k gain (flexible-extract)"]["value"] == pytest.approx(-0.05)
    assert checks["rl gsm8k gain (flexible-extract)"]["uncertainty"] == pytest.approx(math.sqrt(2) * 0.002)
    q1 = res["claim1"]["quantities"]
    assert q1["sft_stress gsm8k gain (flexible-extract)"]["value"] == pytest.approx(-0.10)
    md = claims_markdown(list(res.values()), DEFAULT_ROLES)
    assert "| rl gsm8k gain (flexible-extract) |" in md
    assert "sft_stress gsm8k gain (flexible-extract) = -0.1000 ± 0.0028" in md
    assert "GSM8K on strict-match unless the check names another metric" in md
