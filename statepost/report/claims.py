"""The claims: read as data (``config/claims.yaml``) and judged against the score summary.

A claims file lists claims, each with the roles it needs (``mild``, ``stress``, ... from the config's
``claims.roles``, or a derived role such as ``opd_teacher``, the teacher named by the opd run), its checks (a
quantity, ``op`` ``>``/``<`` and a threshold key of ``claims.thresholds``) and quantities it only reports. The
vocabulary of quantities is ``QUANTITIES``; each is computed from the summary's means with the uncertainty convention
of :mod:`statepost.report.statistics` (a change's standard error paired over the test items where the per-item
scores are given, and each check and quantity then says whether it is: ``paired``). Adding a quantity: a function
here, an entry in ``QUANTITIES`` and its name in the ``quantity`` enum of ``workflow/schemas/claims.schema.yaml``.

A check passes when it holds by more than ``z`` standard errors, fails when violated by more, else is uncertain. A
claim is "not reproduced" if any check fails, "inconclusive" if none fails but one is uncertain, "reproduced" if all
pass, and "not run" when a run it needs (or base, for quantities against base) has no scores.

This module imports no pandas or numpy at module level: the workflow reads claims files when it builds the DAG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


from statepost import benchmarks as bench_facts
from statepost.config import claim_defaults, load_claims
from statepost.io import ConfigError

from .load import BASE, normalize_models, target_and_retention, teacher_ref
from .statistics import lookup, rss


# --------------------------------------------------------------------------------------------- config


def check_thresholds(thresholds: Mapping | None) -> dict[str, float]:
    """The schema's defaults overlaid with ``thresholds``; unknown keys and non-numbers are errors."""
    out = dict(claim_defaults()["thresholds"])
    for k, v in (thresholds or {}).items():
        if k not in out:
            raise ConfigError(f"claims.thresholds.{k}: unknown key (known: {', '.join(out)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"claims.thresholds.{k}: expected a finite number, got {v!r}")
        out[k] = float(v)
    if out["z"] < 0:
        raise ConfigError("claims.thresholds.z: must be >= 0")
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
    """What a quantity reads: (run, benchmark) -> (mean, uncertainty), the roles, target and retention, and the
    standard error of a change (``changes``, a :class:`.statistics.Changes`; None: the two scores' uncertainties
    in quadrature, with no pairing to report)."""

    def __init__(self, look, roles, target, retention, changes=None):
        self.look, self.roles, self.target, self.retention = look, roles, target, retention
        self.changes = changes

    def run(self, role: str) -> str:
        return BASE if role == BASE else self.roles[role]

    def score(self, role: str, bench: str) -> tuple[float, float]:
        return self.look[(self.run(role), bench)]

    def change(self, a: str, b: str, bench: str) -> tuple[float, float, bool | None]:
        """Role ``a`` minus role ``b`` on ``bench``: (value, standard error, whether paired; None: not asked)."""
        (v, u), (bv, bu) = self.score(a, bench), self.score(b, bench)
        if self.changes is None:
            return v - bv, rss(u, bu), None
        c = self.changes(self.run(a), self.run(b), bench)
        return v - bv, c["uncertainty"], c["paired"]

    def benches(self, which: str) -> list[str]:
        """A ``benchmark:`` value as benchmarks: each (target first), target, retention or one name."""
        named = {"each": [self.target, *self.retention], "target": [self.target], "retention": self.retention}
        return named.get(which, [which])


def _gain(ctx: _Context, q: dict):
    """The role minus base on the target benchmark (or ``benchmark``); positive = better."""
    for b in ctx.benches(q.get("benchmark", "target")):
        yield f"{ctx.run(q['role'])} {b} gain", *ctx.change(q["role"], BASE, b)


def _drop(ctx: _Context, q: dict):
    """Base minus the role on ``benchmark``; positive = forgetting."""
    for b in ctx.benches(q["benchmark"]):
        v, u, paired = ctx.change(BASE, q["role"], b)
        yield f"{ctx.run(q['role'])} {b} drop", v, u, paired


def _retention_drop(ctx: _Context, q: dict):
    """Minus the mean change against base on the retention benchmarks; positive = forgetting."""
    cs = [ctx.change(q["role"], BASE, b) for b in ctx.retention]
    paired = None if any(c[2] is None for c in cs) else all(c[2] for c in cs)
    value, unc = -sum(c[0] for c in cs) / len(cs), rss(*(c[1] for c in cs)) / len(cs)
    yield f"{ctx.run(q['role'])} retention drop", value, unc, paired


def _difference(ctx: _Context, q: dict):
    """The first role minus the second on ``benchmark`` (either may be ``base``)."""
    a, b = q["roles"]
    for bench in ctx.benches(q["benchmark"]):
        yield f"{ctx.run(a)} − {ctx.run(b)} on {bench}", *ctx.change(a, b, bench)


# name -> (function yielding (name, value, uncertainty, paired) per benchmark it covers, whether it reads base)
QUANTITIES = {
    "gain": (_gain, lambda q: True),
    "drop": (_drop, lambda q: True),
    "retention_drop": (_retention_drop, lambda q: True),
    "difference": (_difference, lambda q: BASE in q["roles"]),
}


# --------------------------------------------------------------------------------------------- verdicts


def _check(name: str, value: float, unc: float, op: str, threshold: float, z: float, key: str) -> dict:
    """Three-valued comparison ``value op threshold``: pass / fail beyond z*unc, else uncertain."""
    margin = (value - threshold) if op == ">" else (threshold - value)
    width = z * (0.0 if unc is None or math.isnan(unc) else unc)
    if margin > width:
        outcome = "pass"
    elif margin < -width or (width == 0 and margin == 0):
        outcome = "fail"
    else:
        outcome = "uncertain"
    return {
        "quantity": name,
        "value": value,
        "uncertainty": None if unc is None or math.isnan(unc) else unc,
        "op": op,
        "threshold": threshold,
        "threshold_key": key,
        "outcome": outcome,
    }


def _combine(claim, statement, checks, thresholds, quantities) -> dict:
    fails = [c for c in checks if c["outcome"] == "fail"]
    unsure = [c for c in checks if c["outcome"] == "uncertain"]

    def desc(c):
        u = f" ± {c['uncertainty']:.3f}" if c["uncertainty"] is not None else ""
        return f"{c['quantity']} = {c['value']:+.3f}{u} vs {c['op']} {c['threshold']:g} ({c['threshold_key']})"

    if fails:
        verdict = "not reproduced"
        reason = "fails: " + "; ".join(desc(c) for c in fails)
        if unsure:
            reason += ". Also within z·uncertainty: " + "; ".join(desc(c) for c in unsure)
    elif unsure:
        verdict = "inconclusive"
        reason = (
            f"within z = {thresholds['z']:g} standard errors of the threshold, so the verdict hinges on noise: "
            + "; ".join(desc(c) for c in unsure)
        )
    else:
        verdict = "reproduced"
        reason = f"every check holds by more than z = {thresholds['z']:g} standard errors"
    return {
        "claim": claim,
        "statement": statement,
        "quantities": quantities,
        "thresholds": thresholds,
        "checks": checks,
        "verdict": verdict,
        "reason": reason,
    }


def _not_run(claim, statement, thresholds, reason) -> dict:
    return {
        "claim": claim,
        "statement": statement,
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
    for role in claim["roles"]:
        run = ctx.roles.get(role)
        if not run:
            problems.append(f"no run is assigned to role {role!r}")
        elif run not in present_runs:
            problems.append(f"run {run!r} (role {role}) is not in the config's model list / has no scores")
        else:
            lacking = [b for b in benches if (run, b) not in ctx.look]
            if lacking:
                problems.append(f"run {run!r} has no scores on {', '.join(lacking)}")
    if need_base:
        if BASE not in present_runs:
            problems.append("the base model has no scores")
        else:
            lacking = [b for b in benches if (BASE, b) not in ctx.look]
            if lacking:
                problems.append(f"base has no scores on {', '.join(lacking)}")
    return "; ".join(problems) or None


def verdicts(table, roles: Mapping[str, str], thresholds: Mapping[str, float] | None = None, *, claims=None,
             target: str | None = None, retention=None, changes=None) -> list[dict]:  # fmt: skip
    """Judge every claim of ``claims`` (a claims file, ``load_claims``'s result, or None: the default file).

    ``table``: one row per run x benchmark with columns run, benchmark, mean, uncertainty (``summarize``'s output;
    base is the run ``"base"``). ``roles``: role -> run, derived roles resolved (``resolve_roles``).
    ``thresholds``: overrides of the schema's ``claims.thresholds``. ``target``/``retention`` default to the roles
    of the table's benchmarks. ``changes``: a :class:`.statistics.Changes` on the same table, for the standard
    errors of changes (paired over the items where it has per-item scores; every check and quantity then has
    ``paired``); None: the two scores' uncertainties in quadrature, unmarked. Pure: no I/O besides reading the
    claims file.
    """

    spec = load_claims(claims)
    th = check_thresholds(thresholds)
    look = lookup(table)
    present_runs = set(table["run"])
    default_target, default_retention = target_and_retention(dict.fromkeys(table["benchmark"]))
    target = target or default_target
    retention = list(default_retention if retention is None else retention)
    ctx = _Context(look, roles, target, retention, changes)
    out = []
    for claim in spec["claims"]:
        keys = dict.fromkeys([c["threshold"] for c in claim["checks"]] + ["z"])
        sub = {k: th[k] for k in keys}
        why = _missing(claim, ctx, present_runs, [target, *retention])
        if why:
            out.append(_not_run(claim["id"], claim["statement"], sub, why))
            continue
        quantities, checks = {}, []
        for q in claim["checks"] + claim["reports"]:
            for name, v, u, paired in QUANTITIES[q["quantity"]][0](ctx, q):
                quantities[name] = {"value": v, "uncertainty": None if math.isnan(u) else u}
                if paired is not None:
                    quantities[name]["paired"] = paired
                if "op" in q:
                    checks.append(_check(name, v, u, q["op"], th[q["threshold"]], th["z"], q["threshold"]))
                    if paired is not None:
                        checks[-1]["paired"] = paired
                    if "part" in q:
                        checks[-1]["part"] = q["part"]
        out.append(_combine(claim["id"], claim["statement"], checks, sub, quantities))
    return out
