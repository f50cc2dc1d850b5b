"""Claim verdicts: every verdict path of every claim, through hand-made score summaries."""

import math

import pandas as pd
import pytest

from statepost.config import with_defaults
from statepost.io import ConfigError
from statepost.report.claims import check_thresholds, verdicts
from statepost.report.tables import claims_markdown

# The defaults live in the config schema only; opd_teacher is resolved from the opd run's teacher (here: stress).
DEFAULT_THRESHOLDS = with_defaults({}, "claims")["thresholds"]
DEFAULT_ROLES = {**with_defaults({}, "claims")["roles"], "opd_teacher": "sft_stress"}

BENCHES = ("gsm8k", "truthfulqa_mc2", "mmlu")
BASE = (0.30, 0.40, 0.50)
# A picture where every claim holds by a wide margin.
GOOD = {
    "base": BASE,
    "sft_mild": (0.40, 0.395, 0.495),  # gain 0.10, retention drop 0.005
    "sft_stress": (0.45, 0.32, 0.42),  # retention drop 0.08
    "opd": (0.48, 0.36, 0.46),  # beats stress by 0.03/0.04/0.04
    "rl": (0.36, 0.40, 0.498),  # gain 0.06, drop 0.001
}


def table(values: dict, unc: float | dict = 0.001) -> pd.DataFrame:
    """Summary rows (run, benchmark, mean, uncertainty); ``unc`` may be per (run, benchmark)."""
    rows = []
    for run, vals in values.items():
        for b, v in zip(BENCHES, vals):
            u = unc.get((run, b), 0.001) if isinstance(unc, dict) else unc
            rows.append({"run": run, "benchmark": b, "mean": v, "uncertainty": u, "n_seeds": 1})
    return pd.DataFrame(rows)


def by_claim(values, unc=0.001, roles=DEFAULT_ROLES, thresholds=None):
    return {r["claim"]: r for r in verdicts(table(values, unc), roles, thresholds or {})}


def with_(run, vals, base=GOOD):
    d = dict(base)
    d[run] = vals
    return d


def test_all_reproduced_and_record_shape():
    res = by_claim(GOOD)
    assert [r for r in res] == ["claim1", "claim2", "claim3"]
    for r in res.values():
        assert r["verdict"] == "reproduced", r
        assert set(r) >= {"claim", "statement", "quantities", "thresholds", "verdict", "reason"}
        assert r["statement"] and r["reason"]
        for q in r["quantities"].values():
            assert set(q) == {"value", "uncertainty"}
            assert math.isfinite(q["value"]) and q["uncertainty"] > 0
        assert r["thresholds"]["z"] == DEFAULT_THRESHOLDS["z"]
    q1 = res["claim1"]["quantities"]
    assert q1["sft_mild gsm8k gain"]["value"] == pytest.approx(0.10)
    assert q1["sft_mild retention drop"]["value"] == pytest.approx(0.005)
    assert q1["sft_stress retention drop"]["value"] == pytest.approx(0.08)
    assert q1["sft_mild gsm8k gain"]["uncertainty"] == pytest.approx(math.sqrt(2) * 0.001)
    # mean of two changes: sqrt(2 * (2 u^2)) / 2 = u
    assert q1["sft_mild retention drop"]["uncertainty"] == pytest.approx(0.001)
    q2 = res["claim2"]["quantities"]
    assert [v["value"] for v in q2.values()] == pytest.approx([0.03, 0.04, 0.04])
    assert set(res["claim1"]["thresholds"]) == {"min_gain", "little_forgetting", "substantial_loss", "z"}
    assert set(res["claim2"]["thresholds"]) == {"surpass_margin", "z"}


# ------------------------------------------------------------------------------------------ claim 1


@pytest.mark.parametrize(
    "run, vals, failing",
    [
        ("sft_mild", (0.29, 0.395, 0.495), "sft_mild gsm8k gain"),  # mild does not improve GSM8K
        ("sft_mild", (0.40, 0.35, 0.46), "sft_mild retention drop"),  # mild forgets (drop 0.045)
        ("sft_stress", (0.45, 0.39, 0.49), "sft_stress retention drop"),  # stress barely forgets (drop 0.01)
    ],
)
def test_claim1_each_part_failing_alone(run, vals, failing):
    r = by_claim(with_(run, vals))["claim1"]
    assert r["verdict"] == "not reproduced"
    outcomes = {c["quantity"]: c["outcome"] for c in r["checks"]}
    assert outcomes[failing] == "fail"
    assert [o for q, o in outcomes.items() if q != failing] == ["pass", "pass"]
    assert failing in r["reason"]


def test_claim1_parts_are_labelled():
    r = by_claim(GOOD)["claim1"]
    assert [c["part"] for c in r["checks"]] == ["mild", "mild", "stress"]


@pytest.mark.parametrize(
    "run, vals, unc",
    [
        # mild's retention drop 0.015 vs 0.02, uncertainty 0.005 -> within 1.96 se
        ("sft_mild", (0.40, 0.385, 0.485), {("sft_mild", "truthfulqa_mc2"): 0.005, ("sft_mild", "mmlu"): 0.005}),
        # stress's retention drop 0.055 vs 0.05
        ("sft_stress", (0.45, 0.345, 0.445), {("sft_stress", "truthfulqa_mc2"): 0.01}),
        # mild's gain 0.01 vs 0 with a noisy GSM8K
        ("sft_mild", (0.31, 0.395, 0.495), {("sft_mild", "gsm8k"): 0.02}),
    ],
)
def test_claim1_inconclusive(run, vals, unc):
    r = by_claim(with_(run, vals), unc)["claim1"]
    assert r["verdict"] == "inconclusive", r["reason"]
    assert [c["outcome"] for c in r["checks"]].count("uncertain") == 1
    assert "hinges" in r["reason"]


def test_claim1_fail_beats_uncertain():
    vals = with_("sft_mild", (0.31, 0.395, 0.495))  # uncertain gain
    vals["sft_stress"] = (0.45, 0.39, 0.49)  # clear failure
    r = by_claim(vals, {("sft_mild", "gsm8k"): 0.02})["claim1"]
    assert r["verdict"] == "not reproduced"
    assert sorted(c["outcome"] for c in r["checks"]) == ["fail", "pass", "uncertain"]


@pytest.mark.parametrize("missing", ["sft_mild", "sft_stress", "base"])
def test_claim1_not_run(missing):
    vals = {k: v for k, v in GOOD.items() if k != missing}
    res = by_claim(vals)
    assert res["claim1"]["verdict"] == "not run"
    assert missing in res["claim1"]["reason"]
    assert res["claim1"]["quantities"] == {}
    # claim 2 needs no base
    assert res["claim2"]["verdict"] == ("not run" if missing == "sft_stress" else "reproduced")


def test_not_run_when_role_unassigned_or_benchmark_missing():
    roles = {k: v for k, v in DEFAULT_ROLES.items() if k != "mild"}
    assert by_claim(GOOD, roles=roles)["claim1"]["verdict"] == "not run"
    assert "role 'mild'" in by_claim(GOOD, roles=roles)["claim1"]["reason"]
    t = table(GOOD)
    t = t[~((t["run"] == "rl") & (t["benchmark"] == "mmlu"))]
    r = {x["claim"]: x for x in verdicts(t, DEFAULT_ROLES, {})}["claim3"]
    assert r["verdict"] == "not run" and "mmlu" in r["reason"]


# ------------------------------------------------------------------------------------------ claim 2


def test_claim2_not_reproduced_when_one_benchmark_loses():
    r = by_claim(with_("opd", (0.48, 0.36, 0.40)))["claim2"]  # MMLU below teacher (0.42)
    assert r["verdict"] == "not reproduced"
    assert [c["outcome"] for c in r["checks"]] == ["pass", "pass", "fail"]
    assert "mmlu" in r["reason"]


def test_claim2_inconclusive():
    r = by_claim(with_("opd", (0.455, 0.36, 0.46)), {("opd", "gsm8k"): 0.01})["claim2"]
    assert r["verdict"] == "inconclusive"
    assert [c["outcome"] for c in r["checks"]] == ["uncertain", "pass", "pass"]


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
    "vals, unc, verdict, outcomes",
    [
        ((0.36, 0.40, 0.498), 0.001, "reproduced", ["pass", "pass"]),
        ((0.28, 0.40, 0.498), 0.001, "not reproduced", ["fail", "pass"]),  # GSM8K falls
        ((0.36, 0.35, 0.45), 0.001, "not reproduced", ["pass", "fail"]),  # forgets 0.05
        ((0.31, 0.40, 0.498), {("rl", "gsm8k"): 0.02}, "inconclusive", ["uncertain", "pass"]),
        ((0.30, 0.40, 0.498), 0.001, "inconclusive", ["uncertain", "pass"]),  # zero gain, noisy either way
        ((0.36, 0.38, 0.48), {("rl", "mmlu"): 0.01}, "inconclusive", ["pass", "uncertain"]),  # drop 0.02 at threshold
    ],
)
def test_claim3_paths(vals, unc, verdict, outcomes):
    r = by_claim(with_("rl", vals), unc)["claim3"]
    assert r["verdict"] == verdict, r["reason"]
    assert [c["outcome"] for c in r["checks"]] == outcomes


def test_claim3_not_run():
    vals = {k: v for k, v in GOOD.items() if k != "rl"}
    r = by_claim(vals)["claim3"]
    assert r["verdict"] == "not run" and "'rl'" in r["reason"]


# ------------------------------------------------------------------------------------------ thresholds


def test_z_zero_removes_inconclusive():
    r = by_claim(with_("rl", (0.31, 0.40, 0.498)), {("rl", "gsm8k"): 0.02}, thresholds={"z": 0})["claim3"]
    assert r["verdict"] == "reproduced"


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
    assert check_thresholds({"z": 1})["z"] == 1.0
    with pytest.raises(ConfigError, match="claims.thresholds.little_forgeting"):
        check_thresholds({"little_forgeting": 0.1})
    with pytest.raises(ConfigError, match="z"):
        check_thresholds({"z": "two"})
    with pytest.raises(ConfigError):
        verdicts(table(GOOD), DEFAULT_ROLES, {"bogus": 1})


def test_verdicts_is_pure():
    t = table(GOOD)
    before = t.copy()
    a = verdicts(t, DEFAULT_ROLES, {})
    b = verdicts(t, DEFAULT_ROLES, {})
    pd.testing.assert_frame_equal(t, before)
    assert a == b


def test_markdown_has_a_table_per_claim_and_bold_verdicts():
    res = verdicts(table(with_("rl", (0.28, 0.40, 0.498))), DEFAULT_ROLES, {})
    md = claims_markdown(res, DEFAULT_ROLES)
    assert md.count("## claim") == 3
    assert "**reproduced**" in md and "**not reproduced**" in md
    assert md.count("| check") == 3
    assert "+0.1000" in md  # mild gain, signed
    res = verdicts(table({k: v for k, v in GOOD.items() if k != "opd"}), DEFAULT_ROLES, {})
    md = claims_markdown(res)
    assert "**not run**" in md


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
    res = {r["claim"]: r for r in verdicts(table(GOOD), DEFAULT_ROLES, {}, claims=spec)}
    assert list(res) == ["claim1", "claim2", "claim3", "claim4"]
    assert [res[c]["verdict"] for c in ("claim1", "claim2", "claim3")] == ["reproduced"] * 3
    r = res["claim4"]
    assert r["verdict"] == "reproduced" and r["statement"] == FOURTH["statement"]
    assert [c["quantity"] for c in r["checks"]] == ["sft_mild mmlu drop"]
    assert r["checks"][0]["value"] == pytest.approx(0.005) and r["checks"][0]["uncertainty"] == pytest.approx(
        math.sqrt(2) * 0.001
    )
    assert r["thresholds"] == {"little_forgetting": 0.02, "z": 1.96}
    # reported, not checked: mild − base on every benchmark, target first
    assert [(k, v["value"]) for k, v in r["quantities"].items() if k != "sft_mild mmlu drop"] == [
        ("sft_mild − base on gsm8k", pytest.approx(0.10)),
        ("sft_mild − base on truthfulqa_mc2", pytest.approx(-0.005)),
        ("sft_mild − base on mmlu", pytest.approx(-0.005)),
    ]
    md = claims_markdown(list(res.values()), DEFAULT_ROLES)
    assert "## claim4: Mild SFT keeps MMLU" in md and "Also: sft_mild − base on gsm8k = +0.1000" in md
    # the same claim, now failing; and "not run" without base (drop reads base)
    forgets = verdicts(table(with_("sft_mild", (0.40, 0.395, 0.45))), DEFAULT_ROLES, {}, claims=spec)
    assert forgets[3]["verdict"] == "not reproduced" and "sft_mild mmlu drop = +0.050" in forgets[3]["reason"]
    no_base = verdicts(table({k: v for k, v in GOOD.items() if k != "base"}), DEFAULT_ROLES, {}, claims=spec)
    assert no_base[3]["verdict"] == "not run" and "base" in no_base[3]["reason"]


def test_changing_a_claim_in_yaml(tmp_path):
    """claim3 with a stricter requirement: RL must gain on every benchmark, not only GSM8K."""

    def edit(raw):
        raw["claims"][2]["checks"][0] = {"quantity": "gain", "role": "rl", "benchmark": "each", "op": ">",
                                         "threshold": "min_gain"}  # fmt: skip

    spec = load_claims(claims_file(tmp_path, edit))
    r = verdicts(table(with_("rl", (0.36, 0.40, 0.49))), DEFAULT_ROLES, {}, claims=spec)[2]
    assert [c["quantity"] for c in r["checks"]] == [
        "rl gsm8k gain", "rl truthfulqa_mc2 gain", "rl mmlu gain", "rl retention drop",
    ]  # fmt: skip
    assert [c["outcome"] for c in r["checks"]] == ["pass", "uncertain", "fail", "pass"]
    assert r["verdict"] == "not reproduced" and "rl mmlu gain = -0.010" in r["reason"]
    # with the file as it is, the same scores reproduce claim 3 (GSM8K gain and little forgetting)
    assert verdicts(table(with_("rl", (0.36, 0.40, 0.49))), DEFAULT_ROLES, {})[2]["verdict"] == "reproduced"


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
from statepost.report.statistics import summarize  # noqa: E402
from statepost.report.tables import with_other_metrics  # noqa: E402

FLEX = "exact_match,flexible-extract"


def scores_frame(values: dict, flexible: dict) -> pd.DataFrame:
    """Score rows as load_scores gives them: every benchmark's primary metric, and GSM8K's flexible-extract."""
    rows = []
    for run, vals in values.items():
        for b, v in zip(BENCHES, vals):
            rows.append({"model": run, "run": run, "seed": 0, "benchmark": b, "metric": bench_facts.get(b).primary_metric, "value": v,
                         "stderr": 0.001, "n": 100, "primary": True})  # fmt: skip
        rows.append({"model": run, "run": run, "seed": 0, "benchmark": "gsm8k", "metric": FLEX,
                     "value": flexible[run], "stderr": 0.002, "n": 100, "primary": False})  # fmt: skip
    return pd.DataFrame(rows)


def test_claims_table_shows_flexible_extract_next_to_strict_match():
    flexible = {"base": 0.50, "sft_mild": 0.55, "sft_stress": 0.40, "opd": 0.30, "rl": 0.45}
    scores = scores_frame(GOOD, flexible)
    runs = list(GOOD)

    def judge(summary):
        return verdicts(summary, DEFAULT_ROLES, {})

    primary = judge(summarize(scores, runs=runs))
    res = {r["claim"]: r for r in with_other_metrics(primary, scores, judge, runs=runs)}
    # verdicts stay on strict-match (rl loses 0.05 on flexible-extract but gains 0.06 on strict-match)
    assert [r["verdict"] for r in res.values()] == [r["verdict"] for r in primary] == ["reproduced"] * 3
    gain = res["claim3"]["checks"][0]
    assert gain["quantity"] == "rl gsm8k gain" and gain["value"] == pytest.approx(0.06)
    assert gain["other_metrics"][FLEX]["value"] == pytest.approx(-0.05)
    assert gain["other_metrics"][FLEX]["uncertainty"] == pytest.approx(math.sqrt(2) * 0.002)
    assert "other_metrics" not in res["claim3"]["checks"][1]  # the retention drop reads no GSM8K
    diff = {c["quantity"]: c for c in res["claim2"]["checks"]}
    assert diff["opd − sft_stress on gsm8k"]["other_metrics"][FLEX]["value"] == pytest.approx(-0.10)
    assert "other_metrics" not in diff["opd − sft_stress on mmlu"]
    assert res["claim1"]["quantities"]["sft_stress gsm8k gain"]["other_metrics"][FLEX]["value"] == pytest.approx(-0.1)

    md = claims_markdown(list(res.values()), DEFAULT_ROLES)
    header = next(x for x in md.splitlines() if x.startswith("| check"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "check", "value", "± (1 se)", "flexible-extract", "requirement", "outcome"]
    line = next(x for x in md.splitlines() if x.startswith("| rl gsm8k gain"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["rl gsm8k gain", "+0.0600", "0.0014", "-0.0500 ± 0.0028"]
    line = next(x for x in md.splitlines() if x.startswith("| rl retention drop"))
    assert [c.strip() for c in line.strip("|").split("|")][3] == "–"
    assert "sft_stress gsm8k gain = +0.1500 ± 0.0014 (flexible-extract: -0.1000 ± 0.0028)" in md
    assert "primary metric (GSM8K strict-match)" in md
    # without other metrics in the scores, the table is as before
    plain = with_other_metrics(primary, scores[scores["primary"]], judge, runs=runs)
    assert "flexible-extract" not in claims_markdown(plain, DEFAULT_ROLES)
