"""The claims: read as data (``config/claims.yaml``) and judged against the score summary.

A claims file lists claims, each with the roles it needs (``mild``, ``stress``, ... from the config's
``claims.roles``, or a derived role such as ``opd_teacher``, the teacher named by the opd run), its checks (a
quantity, ``op`` ``>``/``<`` and a threshold key of ``claims.thresholds``) and quantities it only reports. The
vocabulary of quantities is ``QUANTITIES``; each is computed from the summary's means with the uncertainty convention
of :mod:`statepost.report.statistics` (a change's standard error paired over the test items where the per-item
scores are given, and each check and quantity then says whether it is: ``paired``). Adding a quantity: a function
here, an entry in ``QUANTITIES`` and its name in the ``quantity`` enum of ``workflow/schemas/claims.schema.yaml``.

A check is judged by a one-sided test at level ``alpha`` (``claims.thresholds.alpha``) against Student's t with the
change's degrees of freedom (:mod:`.statistics`): it passes when the data show its requirement holds, fails when
Holm's procedure over the claim's checks rejects its requirement, else is uncertain. A check of ``kind: guard``
(GSM8K's flexible-extract score not significantly below base: more answers right, not only the format) fails when
its own test rejects its requirement at ``alpha`` and passes otherwise. A
claim is "reproduced" when every check passes, "not reproduced" when one fails (or the label a failing guard
names, ``fails_as``, when it is the only failure: "format only"), "inconclusive" otherwise, and "not run" when a run
it needs (or base, for quantities against base) has no scores. A claim resting on one training seed gets
"provisional (1 seed)" with the checks' reading in ``leaning``: its seed spread is unknown (likewise with two seeds,
``MIN_SEEDS``).

The verdicts are written here too, as ``claims.md``, ``claims.html`` and ``claims.json`` (:func:`write_claims`): the
text says what a verdict means, so it changes with the rules above. The t tail, its quantile and Holm's procedure
are :mod:`.statistics`' maths; the standard-error wording and the HTML page are the tables' (:mod:`.tables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from statepost import benchmarks as bench_facts
from statepost.config import claim_defaults, load_claims
from statepost.io import ConfigError, atomic_file, write_json

from .load import BASE, normalize_models, target_and_retention, teacher_ref
from .statistics import holm, lookup, mean_of_changes, rss, t_isf, t_sf
from .tables import SE_HOW, UNPAIRED, UNPAIRED_NOTE, markdown_page


# --------------------------------------------------------------------------------------------- config


def check_thresholds(thresholds: Mapping | None) -> dict[str, float]:
    """The schema's defaults overlaid with ``thresholds``; unknown keys and non-numbers are errors."""
    out = dict(claim_defaults()["thresholds"])
    for k, v in (thresholds or {}).items():
        if k == "z":
            raise ConfigError("claims.thresholds.z: replaced by alpha, the one-sided level of each check "
                              "(z = 1.96 was alpha = 0.025); the critical value is Student's t at the change's "
                              "degrees of freedom")
        if k not in out:
            raise ConfigError(f"claims.thresholds.{k}: unknown key (known: {', '.join(out)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"claims.thresholds.{k}: expected a finite number, got {v!r}")
        out[k] = float(v)
    if not 0 < out["alpha"] < 0.5:
        raise ConfigError(f"claims.thresholds.alpha: must be in (0, 0.5), got {out['alpha']:g}")
    return out


def resolve_roles(models, roles: Mapping[str, str] | None = None, claims=None) -> dict[str, str]:
    """Claim roles -> runs: the schema's defaults, then ``role`` keys in the model list, then ``roles``. A derived
    role (``derived_roles`` of the claims file, e.g. ``opd_teacher: {teacher_of: opd}``) is, unless given in
    ``roles``, the teacher named by the models of its source role's run; unassigned when none names one."""
    spec = load_claims(claims)
    out = dict(claim_defaults()["roles"])
    norm = normalize_models(models)
    for info in norm.values():
        if info["role"]:
            out[info["role"]] = info["run"]
    roles = dict(roles or {})
    known = [*claim_defaults()["roles"], *spec["derived_roles"]]
    unknown = set(roles) - set(known)
    if unknown:
        raise ConfigError(f"claims.roles: unknown role(s) {sorted(unknown)} (known: {', '.join(known)})")
    out.update(roles)
    for name, how in spec["derived_roles"].items():
        if name in roles:
            continue
        source = out.get(how["teacher_of"])
        teachers = [i["teacher"] for i in norm.values() if i["run"] == source and i["teacher"]]
        if teachers:
            out[name] = teacher_ref(teachers[0])[0]
    return out


# --------------------------------------------------------------------------------------------- quantities


class _Context:
    """What a quantity reads: per metric (None: each benchmark's primary), (run, benchmark) -> (mean, uncertainty)
    and the standard error of a change (a :class:`.statistics.Changes`; None: the two scores' uncertainties in
    quadrature, with no pairing to report); the roles, target and retention benchmarks."""

    def __init__(self, views, roles, target, retention):
        self.views, self.roles, self.target, self.retention = views, roles, target, retention

    def run(self, role: str) -> str:
        return BASE if role == BASE else self.roles[role]

    def metric(self, bench: str, name: str | None) -> str | None:
        """The view key of metric ``name`` on ``bench``: None for the primary metric."""
        if name is None:
            return None
        key = bench_facts.get(bench).metric_key(name)
        return None if key == bench_facts.get(bench).primary_metric else key

    def score(self, role: str, bench: str, metric: str | None = None) -> tuple[float, float]:
        return self.views[metric][0][(self.run(role), bench)]

    def change(self, a: str, b: str, bench: str, metric: str | None = None) -> tuple:
        """Role ``a`` minus role ``b`` on ``bench``: (value, standard error, whether paired (None: not asked),
        degrees of freedom)."""
        (v, u), (bv, bu) = self.score(a, bench, metric), self.score(b, bench, metric)
        changes = self.views[metric][1]
        if changes is None:
            return v - bv, rss(u, bu), None, math.inf
        c = changes(self.run(a), self.run(b), bench)
        return v - bv, c["uncertainty"], c["paired"], c.get("df", math.inf)

    def benches(self, which: str) -> list[str]:
        """A ``benchmark:`` value as benchmarks: each (target first), target, retention or one name."""
        named = {"each": [self.target, *self.retention], "target": [self.target], "retention": self.retention}
        return named.get(which, [which])

    def label(self, name: str, bench: str, q: dict) -> str:
        """A quantity's name, with the metric when it is not the benchmark's primary one."""
        metric = self.metric(bench, q.get("metric"))
        return name if metric is None else f"{name} ({metric.split(',', 1)[-1]})"


def _gain(ctx: _Context, q: dict):
    """The role minus base on the target benchmark (or ``benchmark``); positive = better."""
    for b in ctx.benches(q.get("benchmark", "target")):
        m = ctx.metric(b, q.get("metric"))
        yield ctx.label(f"{ctx.run(q['role'])} {b} gain", b, q), *ctx.change(q["role"], BASE, b, m)


def _drop(ctx: _Context, q: dict):
    """Base minus the role on ``benchmark``; positive = forgetting."""
    for b in ctx.benches(q["benchmark"]):
        m = ctx.metric(b, q.get("metric"))
        yield ctx.label(f"{ctx.run(q['role'])} {b} drop", b, q), *ctx.change(BASE, q["role"], b, m)


def _retention_drop(ctx: _Context, q: dict):
    """Minus the mean change against base on the retention benchmarks; positive = forgetting."""
    cs = [ctx.change(q["role"], BASE, b) for b in ctx.retention]
    paired = None if any(c[2] is None for c in cs) else all(c[2] for c in cs)
    mean, unc, df = mean_of_changes([(c[0], c[1], c[3]) for c in cs])
    yield f"{ctx.run(q['role'])} retention drop", -mean, unc, paired, df


def _difference(ctx: _Context, q: dict):
    """The first role minus the second on ``benchmark`` (either may be ``base``)."""
    a, b = q["roles"]
    for bench in ctx.benches(q["benchmark"]):
        m = ctx.metric(bench, q.get("metric"))
        yield ctx.label(f"{ctx.run(a)} − {ctx.run(b)} on {bench}", bench, q), *ctx.change(a, b, bench, m)


# name -> (function yielding (name, value, uncertainty, paired, df) per benchmark it covers, whether it reads base)
QUANTITIES = {
    "gain": (_gain, lambda q: True),
    "drop": (_drop, lambda q: True),
    "retention_drop": (_retention_drop, lambda q: True),
    "difference": (_difference, lambda q: BASE in q["roles"]),
}


# --------------------------------------------------------------------------------------------- verdicts

# A claim resting on fewer training seeds than this gets no verdict but provisional(n): with one seed the spread over
# seeds cannot be estimated at all, and with two the rule's false "reproduced" rate at alpha = 0.025 is about 0.055
# when the seed spread dominates (tests/test_error_rates.py); three give about 0.036, five 0.028.
MIN_SEEDS = 3


def provisional(n: int) -> str:
    return f"provisional ({n} seed{'s' if n != 1 else ''})"


def _check(name, value, unc, df, q, threshold, alpha) -> dict:
    """A check's statistics: its margin (how far the quantity is on the required side of the threshold) and
    ``p_violated``, the one-sided p-value of "the requirement holds" (small: evidence it is violated); the
    outcome is set by :func:`_decide`."""
    margin = (value - threshold) if q["op"] == ">" else (threshold - value)
    unc = None if unc is None or math.isnan(unc) else unc
    if not unc:  # no uncertainty: the comparison itself
        p_violated = 0.0 if margin <= 0 else 1.0
        critical = 0.0
    else:  # under "the requirement holds exactly" margin / unc is Student's t with df degrees of freedom
        p_violated = 1.0 - t_sf(margin / unc, df)
        critical = t_isf(alpha, df)
    out = {
        "quantity": name,
        "value": value,
        "uncertainty": unc,
        "df": df if math.isfinite(df) else None,
        "op": q["op"],
        "threshold": threshold,
        "threshold_key": q["threshold"],
        "kind": q.get("kind", "check"),
        "p_violated": p_violated,
        "p_holds": 1.0 - p_violated if unc else (1.0 if margin <= 0 else 0.0),
        # the smallest distance beyond the threshold that passes with 80% probability (a guard: that fails)
        "decidable_at": (critical + t_isf(0.2, df)) * unc if unc else 0.0,
    }
    for key in ("metric", "part", "fails_as"):
        if key in q:
            out[key] = q[key]
    return out


def _decide(checks: list[dict], alpha: float) -> None:
    """Each check's outcome. A check of kind ``check`` fails when Holm's procedure over the claim's checks rejects
    its requirement (so a claim whose requirements all hold is called "not reproduced" with probability at most
    ``alpha``), passes when it holds at one-sided level ``alpha`` (a claim is reproduced only when every check
    passes: an intersection-union test, whose false "reproduced" rate is at most ``alpha``), else is uncertain.
    A guard asks its own question (is the gain only the answer format?): it fails when its requirement is rejected
    at ``alpha`` by itself, and passes otherwise. Holm over the claim's other checks would make a guard weaker the
    more unrelated checks its claim has (claim 1's flexible-extract guard would need p < alpha / 6)."""
    family = [c for c in checks if c["kind"] != "guard"]
    for c, rejected in zip(family, holm([c["p_violated"] for c in family], alpha)):
        c["outcome"] = "fail" if rejected else "pass" if c["p_holds"] <= alpha else "uncertain"
    for c in checks:
        if c["kind"] == "guard":
            c["outcome"] = "fail" if c["p_violated"] <= alpha else "pass"


def _desc(c: dict) -> str:
    u = f" ± {c['uncertainty']:.3f}" if c["uncertainty"] is not None else ""
    return f"{c['quantity']} = {c['value']:+.3f}{u} vs {c['op']} {c['threshold']:g} ({c['threshold_key']})"


def _combine(claim, statement, checks, thresholds, quantities, n_seeds: int) -> dict:
    fails = [c for c in checks if c["outcome"] == "fail"]
    unsure = [c for c in checks if c["outcome"] == "uncertain"]
    labels = {c.get("fails_as") for c in fails}
    if fails and len(labels) == 1 and None not in labels and all(
        c["outcome"] == "pass" for c in checks if c["kind"] != "guard"
    ):
        verdict = labels.pop()
        reason = "every check passes but: " + "; ".join(_desc(c) for c in fails)
    elif fails:
        verdict = "not reproduced"
        reason = "fails: " + "; ".join(_desc(c) for c in fails)
        if unsure:
            reason += ". Also undecided: " + "; ".join(_desc(c) for c in unsure)
    elif unsure:
        verdict = "inconclusive"
        reason = "undecided at this size, so the verdict hinges on noise: " + "; ".join(_desc(c) for c in unsure)
    else:
        verdict = "reproduced"
        reason = "every check holds"
    out = {
        "claim": claim,
        "statement": statement,
        "n_seeds": n_seeds,
        "quantities": quantities,
        "thresholds": thresholds,
        "checks": checks,
        "verdict": verdict,
        "reason": reason,
    }
    if n_seeds < MIN_SEEDS:
        out["verdict"], out["leaning"] = provisional(n_seeds), verdict
        why = "cannot be estimated" if n_seeds < 2 else "rests on one degree of freedom"
        out["reason"] = (
            f"the spread over training seeds {why}, so no verdict is drawn before {MIN_SEEDS} seeds; the checks "
            f"alone read {verdict!r}: {reason}. Run more seeds (the config's seeds: [0, 1, 2])"
        )
    return out


def _not_run(claim, statement, thresholds, reason) -> dict:
    return {
        "claim": claim,
        "statement": statement,
        "n_seeds": 0,
        "quantities": {},
        "thresholds": thresholds,
        "checks": [],
        "verdict": "not run",
        "reason": reason,
    }


def _missing(claim: dict, ctx: _Context, present_runs: set, benches: list[str]) -> str | None:
    """Why a claim cannot be judged (a run it needs, or base, lacks scores), else None."""
    qs = claim["checks"] + claim["reports"]
    need_base = any(QUANTITIES[q["quantity"]][1](q) for q in qs)
    benches = list(dict.fromkeys(benches + [q["benchmark"] for q in qs if q.get("benchmark") in bench_facts.NAMES]))
    problems = []
    runs = [(role, ctx.roles.get(role)) for role in claim["roles"]] + ([(BASE, BASE)] if need_base else [])
    for role, run in runs:
        if not run:
            problems.append(f"no run is assigned to role {role!r}")
            continue
        if run not in present_runs:
            problems.append("the base model has no scores" if run == BASE else
                            f"run {run!r} (role {role}) is not in the config's model list / has no scores")  # fmt: skip
            continue
        lacking = [b for b in benches if (run, b) not in ctx.views[None][0]]
        for q in qs:
            for b in ctx.benches(q.get("benchmark", "target")) if "metric" in q else []:
                m = ctx.metric(b, q["metric"])
                if (m not in ctx.views or (run, b) not in ctx.views[m][0]) and f"{b} {q['metric']}" not in lacking:
                    lacking.append(f"{b} {q['metric']}")
        if lacking:
            problems.append(f"{'base' if run == BASE else f'run {run!r}'} has no scores on {', '.join(lacking)}")
    return "; ".join(problems) or None


def claim_seeds(claim: dict, ctx: _Context, seeds: Mapping[str, int]) -> int:
    """The training seeds a claim rests on: the fewest of its roles' runs (base has none of its own)."""
    return min((seeds.get(ctx.run(role), 1) for role in claim["roles"]), default=1)


def verdicts(table, roles: Mapping[str, str], thresholds: Mapping[str, float] | None = None, *, claims=None,
             target: str | None = None, retention=None, changes=None, metrics=None) -> list[dict]:  # fmt: skip
    """Judge every claim of ``claims`` (a claims file, ``load_claims``'s result, or None: the default file).

    ``table``: one row per run x benchmark on each benchmark's primary metric, with columns run, benchmark, mean,
    uncertainty and n_seeds (``summarize``'s output; base is the run ``"base"``). ``roles``: role -> run, derived
    roles resolved (``resolve_roles``). ``thresholds``: overrides of the schema's ``claims.thresholds``.
    ``target``/``retention`` default to the roles of the table's benchmarks. ``changes``: a
    :class:`.statistics.Changes` on the same table, for the standard errors and degrees of freedom of changes
    (paired over the items where it has per-item scores; every check and quantity then has ``paired``); None: the
    two scores' uncertainties in quadrature, unmarked, on infinite degrees of freedom. ``metrics``: metric key ->
    (table, changes) read on that metric, for checks that name one (``metric: flexible-extract``). Pure: no I/O
    besides reading the claims file.
    """

    spec = load_claims(claims)
    th = check_thresholds(thresholds)
    views = {None: (lookup(table), changes)}
    views.update({m: (lookup(t), c) for m, (t, c) in (metrics or {}).items()})
    present_runs = set(table["run"])
    seeds = dict(zip(table["run"], table["n_seeds"] if "n_seeds" in table else [1] * len(table)))
    default_target, default_retention = target_and_retention(dict.fromkeys(table["benchmark"]))
    target = target or default_target
    retention = list(default_retention if retention is None else retention)
    ctx = _Context(views, roles, target, retention)
    out = []
    for claim in spec["claims"]:
        keys = dict.fromkeys([c["threshold"] for c in claim["checks"]] + ["alpha"])
        sub = {k: th[k] for k in keys}
        why = _missing(claim, ctx, present_runs, [target, *retention])
        if why:
            out.append(_not_run(claim["id"], claim["statement"], sub, why))
            continue
        quantities, checks = {}, []
        for q in claim["checks"] + claim["reports"]:
            for name, v, u, paired, df in QUANTITIES[q["quantity"]][0](ctx, q):
                quantities[name] = {"value": v, "uncertainty": None if math.isnan(u) else u}
                if paired is not None:
                    quantities[name]["paired"] = paired
                if "op" in q:
                    checks.append(_check(name, v, u, df, q, th[q["threshold"]], th["alpha"]))
                    if paired is not None:
                        checks[-1]["paired"] = paired
        _decide(checks, th["alpha"])
        out.append(_combine(claim["id"], claim["statement"], checks, sub, quantities, claim_seeds(claim, ctx, seeds)))
    return out


# --------------------------------------------------------------------------------------------- claims.md, claims.json


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _mark(q: Mapping) -> str:
    """The unpaired mark for a check or quantity judged with pairing that is not paired."""
    return UNPAIRED if q.get("paired") is False else ""


def requirement(c: Mapping) -> str:
    """A check's requirement in words: ``> 0 (min_gain)``, or a guard's ``not significantly < 0 (no_loss)``."""
    if c.get("kind") == "guard":
        bad = "<" if c["op"] == ">" else ">"
        return f"not significantly {bad} {c['threshold']:g} ({c['threshold_key']})"
    return f"{c['op']} {c['threshold']:g} ({c['threshold_key']})"


def power(c: Mapping) -> str:
    """Where the true value must lie for the check to be decided with 80% probability (a guard: to fail)."""
    if c["uncertainty"] is None:
        return "–"
    toward = 1 if c["op"] == ">" else -1
    if c.get("kind") == "guard":
        return f"{'<' if toward > 0 else '>'} {c['threshold'] - toward * c['decidable_at']:+.3f}"
    return f"{c['op']} {c['threshold'] + toward * c['decidable_at']:+.3f}"


def _verdict_line(r: Mapping) -> str:
    seeds = f"{r['n_seeds']} training seed{'s' if r['n_seeds'] != 1 else ''}"
    lean = f" (the checks alone: {r['leaning']})" if "leaning" in r else ""
    return f"Verdict: **{r['verdict']}**{lean}, on {seeds}. {r['reason']}."


def claims_markdown(results: list[dict], roles: Mapping[str, str] | None = None, retention=None) -> str:
    """Render verdicts: a table of checks per claim and the verdict in bold."""
    retention = list(bench_facts.RETENTION if retention is None else retention)
    lines = ["# Claim verdicts", ""]
    parts = [q for r in results for q in [*r["checks"], *r["quantities"].values()]]
    if not any("paired" in q for q in parts):
        se = "± is one combined standard error. "
    else:
        se = "± is one standard error of the change: " + SE_HOW + " "
        se += UNPAIRED_NOTE.strip() + " " if any(q.get("paired") is False for q in parts) else ""
    if results:
        alpha = results[0]["thresholds"].get("alpha", claim_defaults()["thresholds"]["alpha"])
        primaries = _and([f"{b.label} on {b.primary_metric.split(',', 1)[-1]}" for b in bench_facts.BENCHMARKS.values()
                          if b.metrics])  # fmt: skip
        lines += [
            "Accuracy differences are fractions (0.02 = 2 points); a drop is base minus the run (positive = "
            f"forgetting); retention drop is the mean drop on {_and([bench_facts.get(b).label for b in retention])}. "
            f"{primaries + ' unless the check names another metric. ' if primaries else ''}" + se,
            "",
            f"Each check is a one-sided test at α = {alpha:g} against Student's t with the change's degrees of "
            "freedom (df: few seeds make the seed spread uncertain). A check passes when the data show its "
            "requirement holds; it fails when Holm's procedure over the claim's checks rejects its requirement; "
            "else it is uncertain. A guard (GSM8K flexible-extract: more answers right, not only the format) fails "
            "when its own test rejects it at α, and passes otherwise. So a claim's chance of a false \"reproduced\", "
            "of a false \"not reproduced\" from its checks and of a false \"format only\" from a guard is each "
            "about α (up to 1.5 α when the spread over three seeds dominates: results/README.md, \"Verdicts and "
            f"their error rates\"). A claim on fewer than {MIN_SEEDS} training seeds is provisional: its seed spread "
            "is not known well enough. p: the one-sided p-values that the "
            "requirement holds / is violated. 80% power: where the true value must lie for the check to be decided "
            "(a guard: to fail) with probability 0.8 at this size.",
            "",
        ]
    if roles:
        lines += ["Roles: " + ", ".join(f"{k} = `{v}`" for k, v in roles.items()), ""]
    for r in results:
        lines += [f"## {r['claim']}: {r['statement']}", ""]
        if r["checks"]:
            rows = [
                {
                    "check": c["quantity"],
                    "value": f"{c['value']:+.4f}",
                    "± (1 se)": "–" if c["uncertainty"] is None else f"{c['uncertainty']:.4f}{_mark(c)}",
                    "df": "∞" if c.get("df") is None else f"{c['df']:.1f}",
                    "requirement": requirement(c),
                    "p holds / violated": f"{c['p_holds']:.3g} / {c['p_violated']:.3g}",
                    "80% power": power(c),
                    "outcome": c["outcome"],
                }
                for c in r["checks"]
            ]
            align = ("left", "right", "right", "right", "left", "right", "right", "left")
            lines += [pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True, colalign=align), ""]
        extra = {k: v for k, v in r["quantities"].items() if k not in {c["quantity"] for c in r["checks"]}}
        if extra:
            lines += [
                "Also: "
                + "; ".join(
                    f"{k} = {v['value']:+.4f}"
                    + ("" if v["uncertainty"] is None else f" ± {v['uncertainty']:.4f}{_mark(v)}")
                    for k, v in extra.items()
                ),
                "",
            ]
        lines += [_verdict_line(r), ""]
    return "\n".join(lines)


def write_claims(results: list[dict], tables_dir, roles: Mapping[str, str] | None = None, retention=None):
    """Write ``claims.md``, ``claims.html`` (the same as a page) and ``claims.json`` atomically."""
    tables_dir = Path(tables_dir)
    text = claims_markdown(results, roles, retention)
    md, page = tables_dir / "claims.md", tables_dir / "claims.html"
    for path, content in ((md, text), (page, markdown_page(text, "Claim verdicts"))):
        with atomic_file(path) as tmp:
            tmp.write_text(content, encoding="utf-8")
    js = tables_dir / "claims.json"
    write_json(js, {"roles": dict(roles or {}), "claims": results})
    return [md, page, js]
