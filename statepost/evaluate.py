"""Score one model on one benchmark with lm-evaluation-harness, on our local data files.

The standard task definitions are kept: the task YAML templates in ``workflow/tasks/`` ``include:``
lm-eval's builtin task file by path and override only the task name, its tags and where the data
come from. They are rendered at run time into a per-job directory (the builtin folder depends on where
the environment lives), registered with ``TaskManager(include_defaults=False, include_path=...)`` and
evaluated with ``lm_eval.simple_evaluate`` and lm-eval's ``hf`` model type (or ``vllm``, the config's
``evaluation.backend``).

MMLU is one local task per subject present in the data (each including
``mmlu/default/mmlu_{subject}.yaml``, with its own ``dev`` few-shot pool split out of our files),
grouped by the builtin category groups and the builtin ``mmlu`` group (acc, size-weighted mean), so the
prompts, the few-shot pool and the aggregate are those of the published numbers.

Heavy imports (torch, lm_eval) happen inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import string
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from statepost import benchmarks, data
from statepost.io import (DataError, prepare_output, samples_path, scratch_dir, sha256_file, utc_now, write_json,
                          write_jsonl)  # fmt: skip
from statepost.backends import check_backend, make_lm
from statepost.models import verify_model_dir

log = logging.getLogger(__name__)

MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")
# lm-eval's own defaults for simple_evaluate, passed explicitly so every job is seeded the same way.
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


class TaskRegistrationError(RuntimeError):
    """A rendered task YAML did not register with lm-eval (it is skipped silently otherwise)."""


# --------------------------------------------------------------------------------------- helpers
def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """auto: cuda + bfloat16 when CUDA is available, else cpu + float32 (CPUs here have no native bf16)."""
    if device == "auto" or dtype == "auto":
        import torch

        cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def _yaml_str(s: str | Path) -> str:
    """Escape a value for use inside a double-quoted YAML scalar in a template."""
    return json.dumps(str(s))[1:-1]


def _render(template_dir: Path, name: str, out: Path, **values) -> Path:
    path = Path(template_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"task template not found: {path}")
    try:
        text = string.Template(path.read_text()).substitute(**values)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: cannot render task template ({type(e).__name__}: {e})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def _bench_dir(data_dir: str | Path, benchmark: str) -> Path:
    """data_dir is results/{experiment}/data (benchmark sub-folders); results/{experiment}/data/{benchmark} itself is accepted too."""
    data_dir = Path(data_dir)
    if (data_dir / benchmark).is_dir() or data_dir.name != benchmark:
        return data_dir / benchmark
    return data_dir


def _data_file(bench_dir: Path, split: str) -> Path:
    path = bench_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: data file not found (expected {split}.jsonl in {bench_dir})")
    return path


def _check_rows(path: Path, benchmark: str) -> list[dict]:
    """The rows of a data file, every one validated as the data rule does (errors name file:line and field)."""
    return data.load_split(path.parent, benchmark, path.stem)


# ------------------------------------------------------------------------------ task rendering
@dataclass
class TaskSpec:
    """What render_tasks produced: the name to evaluate, every name that must be registered, and the files."""

    benchmark: str
    task: str
    workdir: Path
    expected: dict[str, Path] = field(default_factory=dict)  # lm-eval name -> rendered YAML
    data_files: dict[str, str] = field(default_factory=dict)  # source data file -> sha256
    subjects: list[str] = field(default_factory=list)  # mmlu only
    splits: dict[str, str] = field(default_factory=dict)


def render_tasks(
    benchmark: str,
    data_dir: str | Path,
    eval_cfg: dict | None,
    workdir: str | Path,
    template_dir: str | Path | None = None,
) -> TaskSpec:
    """Check the data and render the local task YAMLs for ``benchmark`` into ``workdir/tasks``."""
    facts = benchmarks.get(benchmark)
    eval_cfg = eval_cfg or {}
    template_dir = Path(template_dir) if template_dir else benchmarks.TASKS_DIR
    workdir = Path(workdir)
    tasks_out = workdir / "tasks"
    tasks_out.mkdir(parents=True, exist_ok=True)
    builtin = benchmarks.lm_eval_tasks_dir()
    common = {"lm_eval_tasks": _yaml_str(builtin), "cache_dir": _yaml_str(workdir / "hf_datasets_cache")}
    bench_dir = _bench_dir(data_dir, benchmark)
    split = eval_cfg.get("split") or facts.eval_split
    fewshot_split = eval_cfg.get("fewshot_split") or facts.fewshot_split
    spec = TaskSpec(benchmark=benchmark, task=facts.task, workdir=workdir)
    spec.splits = {"eval": split, **({"fewshot": fewshot_split} if fewshot_split else {})}

    def source(split_name: str) -> Path:
        path = _data_file(bench_dir, split_name)
        spec.data_files[str(path)] = sha256_file(path)
        return path

    if benchmark == "gsm8k":
        test, train = source(split), source(fewshot_split)
        _check_rows(test, benchmark)
        _check_rows(train, benchmark)
        out = _render(template_dir, "gsm8k.yaml.template", tasks_out / "statepost_gsm8k.yaml",
                      train=_yaml_str(train.resolve()), test=_yaml_str(test.resolve()), **common)
        spec.expected[spec.task] = out
    elif benchmark == "truthfulqa_mc2":
        val = source(split)
        _check_rows(val, benchmark)
        out = _render(template_dir, "truthfulqa_mc2.yaml.template", tasks_out / "statepost_truthfulqa_mc2.yaml",
                      validation=_yaml_str(val.resolve()), **common)
        spec.expected[spec.task] = out
    else:
        _render_mmlu(spec, source(split), source(fewshot_split), eval_cfg, builtin, template_dir, common)
    return spec


def _builtin_category(builtin: Path, subject: str, where: str) -> str:
    path = builtin / "mmlu" / "default" / f"mmlu_{subject}.yaml"
    if not path.is_file():
        raise DataError(f"{where}: MMLU subject {subject!r} has no lm-eval task ({path} not found)")
    tag = yaml.safe_load(path.read_text()).get("tag", "")
    m = re.fullmatch(r"mmlu_(\w+)_tasks", str(tag))
    if not m or m.group(1) not in MMLU_CATEGORIES:
        raise DataError(f"{path}: unexpected tag {tag!r}; cannot place subject {subject!r} in an MMLU category")
    return m.group(1)


def _render_mmlu(spec, test, dev, eval_cfg, builtin, template_dir, common):
    test_rows, dev_rows = _check_rows(test, "mmlu"), _check_rows(dev, "mmlu")
    by_subject: dict[str, dict[str, list]] = defaultdict(lambda: {"test": [], "dev": []})
    for r in test_rows:
        by_subject[r["subject"]]["test"].append(r)
    for r in dev_rows:
        if r["subject"] in by_subject:  # dev rows of subjects not scored are not needed
            by_subject[r["subject"]]["dev"].append(r)
    shots = int(eval_cfg.get("num_fewshot") or 0)
    data_out = spec.workdir / "data" / "mmlu"
    tasks_out = spec.workdir / "tasks"
    categories: dict[str, list[str]] = defaultdict(list)
    for subject in sorted(by_subject):
        cat = _builtin_category(builtin, subject, str(test))
        parts = by_subject[subject]
        if len(parts["dev"]) < shots:
            raise DataError(
                f"{dev}: MMLU subject {subject!r} has {len(parts['dev'])} dev rows, fewer than num_fewshot={shots}"
            )
        sub_dir = data_out / subject
        write_jsonl(sub_dir / "test.jsonl", parts["test"])
        # With 0 shots the few-shot pool is never read; the builtin task still names a dev split.
        write_jsonl(sub_dir / "dev.jsonl", parts["dev"] or parts["test"])
        name = f"statepost_mmlu_{subject}"
        spec.expected[name] = _render(
            template_dir, "mmlu_subject.yaml.template", tasks_out / f"{name}.yaml", subject=subject,
            dev=_yaml_str((sub_dir / "dev.jsonl").resolve()), test=_yaml_str((sub_dir / "test.jsonl").resolve()),
            **common,
        )
        categories[cat].append(name)
        spec.subjects.append(subject)
    cat_groups = []
    for cat in MMLU_CATEGORIES:
        if not categories.get(cat):
            continue
        group = f"statepost_mmlu_{cat}"
        spec.expected[group] = _render(
            template_dir, "mmlu_group.yaml.template", tasks_out / f"{group}.yaml",
            lm_eval_tasks=common["lm_eval_tasks"], builtin_group_file=f"_mmlu_{cat}.yaml", group=group,
            members=json.dumps(categories[cat]),
        )
        cat_groups.append(group)
    spec.expected[spec.task] = _render(
        template_dir, "mmlu_group.yaml.template", tasks_out / f"{spec.task}.yaml",
        lm_eval_tasks=common["lm_eval_tasks"], builtin_group_file="_mmlu.yaml", group=spec.task,
        members=json.dumps(cat_groups),
    )


def task_manager(spec: TaskSpec):
    """A TaskManager over the rendered YAMLs only, after checking that every expected name registered."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_defaults=False, include_path=str(spec.workdir / "tasks"))
    known = set(tm.all_tasks)
    missing = [n for n in spec.expected if n not in known]
    if missing:
        details = []
        for name in missing:
            path = spec.expected[name]
            reason = "it parsed but did not define this name"
            try:
                from lm_eval.tasks._yaml_loader import load_yaml  # private; only used to explain the failure

                load_yaml(path, resolve_func=False)
            except Exception as e:  # noqa: BLE001 - reported, not swallowed
                reason = f"{type(e).__name__}: {e}"
            details.append(f"  {name}: {path}: {reason}")
        raise TaskRegistrationError(
            f"lm-eval task(s) not registered from the rendered YAMLs in {spec.workdir / 'tasks'}:\n"
            + "\n".join(details)
        )
    return tm


# ------------------------------------------------------------------------------ result parsing
def _num(x):
    if x is None or x == "N/A":
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def metric_list(res: dict) -> list[dict]:
    """lm-eval's {"acc,none": v, "acc_stderr,none": s, ...} -> [{"metric", "value", "stderr"}, ...]."""
    out = []
    for key, value in res.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        if metric.endswith("_stderr"):
            continue
        if _num(value) is None and value is not None:
            continue
        out.append({"metric": key, "value": _num(value), "stderr": _num(res.get(f"{metric}_stderr,{filt}"))})
    return sorted(out, key=lambda m: m["metric"])


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x
    if hasattr(x, "item"):  # numpy / torch scalars
        return _jsonable(x.item())
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return str(x)


def sample_rows(samples: dict[str, list[dict]]) -> list[dict]:
    """lm-eval logs one entry per (doc, filter); merge them into one JSON row per (task, doc)."""
    rows: dict[tuple[str, int], dict] = {}
    for task, entries in sorted(samples.items()):
        for e in entries:
            key = (task, int(e["doc_id"]))
            args = e.get("arguments") or []
            row = rows.get(key)
            if row is None:
                resps = e.get("resps") or []
                generated = len(args) == 1 and len(args[0]) > 1 and isinstance(args[0][1], dict)
                row = rows[key] = {
                    "task": task,
                    "doc_id": int(e["doc_id"]),
                    "prompt": args[0][0] if args else None,
                    "target": e.get("target"),
                    # generation: the generated text; multiple choice: [loglikelihood, is_greedy] per choice
                    "response": (resps[0][0] if resps and resps[0] else None) if generated
                    else [r[0] if r else None for r in resps],
                    "filtered": {},
                    "metrics": {},
                    "doc": e.get("doc"),
                }
                if not generated:
                    row["choices"] = [a[1] for a in args if len(a) > 1]
            filt = e.get("filter", "none")
            fr = e.get("filtered_resps")
            row["filtered"][filt] = fr[0] if isinstance(fr, list) and len(fr) == 1 else fr
            for m in e.get("metrics", []):
                if m in e:
                    row["metrics"][f"{m},{filt}"] = e[m]
    return [_jsonable(r) for r in rows.values()]


def _model_name(out_json: Path, model_dir: Path) -> str:
    parts = out_json.parent.parts
    if "scores" in parts:
        i = len(parts) - 1 - parts[::-1].index("scores")
        rest = parts[i + 1 :]
        if rest:
            return "/".join(rest)
    return model_dir.name


# ------------------------------------------------------------------------------ the evaluation
def evaluate(
    model_dir: str | Path,
    benchmark: str,
    data_dir: str | Path,
    eval_cfg: dict,
    out_json: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    model_name: str | None = None,
    *,
    workdir: str | Path | None = None,
    template_dir: str | Path | None = None,
    backend: str = "hf",
) -> dict:
    """Score the model in ``model_dir`` on ``benchmark``; write ``out_json`` and the samples log beside it.

    eval_cfg: {num_fewshot, max_gen_toks, limit (int|null; per task, so per subject for MMLU),
    batch_size, split?, fewshot_split?}. ``workdir`` keeps the rendered tasks (default: ``.{out}.work{rank}``,
    removed afterwards). Returns the score record (also written to ``out_json``) with "timing_s" in
    seconds (import, tasks: build + data load, model: load, evaluate, total); {} on a non-zero rank of
    a multi-process (accelerate) run, where rank 0 writes the files.
    """
    t0 = time.perf_counter()
    model_dir, out_json = Path(model_dir), Path(out_json)
    eval_cfg = dict(eval_cfg or {})
    benchmarks.get(benchmark)  # a ValueError naming the known ones
    verify_model_dir(model_dir)  # every file against the sha256 in its run.json, before any compute
    check_backend(backend, device)
    limit = eval_cfg.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"eval.limit must be a positive int or null, got {limit!r}")
    num_fewshot = int(eval_cfg.get("num_fewshot", 0) or 0)
    batch_size = eval_cfg["batch_size"]  # the schema's, or scripts/evaluate.py's --batch-size
    max_gen_toks = eval_cfg.get("max_gen_toks")
    samples_log = samples_path(out_json)
    rank = int(os.environ.get("RANK", "0"))  # under accelerate launch every process runs this
    if rank == 0:
        prepare_output(out_json, samples_log)  # writable, and a killed job's leftovers beside them cleaned

    import lm_eval
    import torch  # noqa: F401

    timing = {"import": time.perf_counter() - t0}
    device, dtype = resolve_device_dtype(device, dtype)

    tmp = None
    if workdir is None:  # beside the score file (a killed job's one is removed first)
        workdir = tmp = scratch_dir(out_json, f"work{rank}")
    try:
        t = time.perf_counter()
        spec = render_tasks(benchmark, data_dir, eval_cfg, workdir, template_dir)
        tm = task_manager(spec)
        loaded = tm.load([spec.task])  # builds the tasks and reads the data (timed apart from the model)
        top = loaded["groups"][spec.task] if spec.task in loaded.get("groups", {}) else loaded["tasks"][spec.task]
        timing["tasks"] = time.perf_counter() - t

        t = time.perf_counter()
        lm = make_lm(backend, model_dir, dtype, device, batch_size)
        timing["model"] = time.perf_counter() - t

        t = time.perf_counter()
        gen_kwargs = {"max_gen_toks": int(max_gen_toks)} if (benchmark == "gsm8k" and max_gen_toks) else None
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[top],
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=True,
            gen_kwargs=gen_kwargs,
            task_manager=tm,
            **SEEDS,
        )
        timing["evaluate"] = time.perf_counter() - t
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    if results is None:  # a non-zero rank under `accelerate launch`: rank 0 gathers and writes
        return {}
    record = _score_record(results, spec, benchmark, eval_cfg, limit, model_dir, out_json, model_name,
                           device, dtype, gen_kwargs)
    timing["total"] = time.perf_counter() - t0
    record["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    write_jsonl(samples_log, sample_rows(results.get("samples", {})))
    write_json(out_json, record)
    return record


def _score_record(results, spec, benchmark, eval_cfg, limit, model_dir, out_json, model_name, device, dtype,
                  gen_kwargs) -> dict:
    task = spec.task
    res = (results.get("groups") or {}).get(task) or results["results"][task]
    metrics = metric_list(res)
    primary = benchmarks.get(benchmark).primary_metric
    by_name = {m["metric"]: m for m in metrics}
    if primary not in by_name:
        raise RuntimeError(f"lm-eval gave no {primary!r} for {task}; got {sorted(by_name)}")
    n_samples = results.get("n-samples", {})
    leaves = [n for n in spec.expected if n in n_samples]
    n = sum(int(n_samples[leaf]["effective"]) for leaf in leaves)
    shots = results.get("n-shot", {})
    leaf_shots = sorted({int(shots[leaf]) for leaf in leaves if leaf in shots})
    record = {
        "model": model_name or _model_name(out_json, model_dir),
        "benchmark": benchmark,
        "task": task,
        "metrics": metrics,
        "primary_metric": primary,
        "value": by_name[primary]["value"],
        "stderr": by_name[primary]["stderr"],
        "n": n,
        "num_fewshot": leaf_shots[0] if len(leaf_shots) == 1 else int(eval_cfg.get("num_fewshot", 0) or 0),
        "limit": limit,
        "lm_eval_version": metadata.version("lm_eval"),
        "model_path": str(model_dir),
        "created": utc_now(),
        # provenance beyond the spec's required keys
        "splits": spec.splits,
        "data_files": spec.data_files,
        "device": device,
        "dtype": dtype,
        "batch_size": eval_cfg["batch_size"],
        "seeds": SEEDS,
    }
    if int(eval_cfg.get("num_fewshot", 0) or 0) != record["num_fewshot"]:
        log.warning("%s: lm-eval used %s shots, config asked for %s (the builtin task fixes it)",
                    task, record["num_fewshot"], eval_cfg.get("num_fewshot"))
    if gen_kwargs is not None or benchmark == "gsm8k":
        cfg = results.get("configs", {}).get(task, {})
        record["generation_kwargs"] = _jsonable(cfg.get("generation_kwargs"))
    if benchmark == "mmlu":
        record["subtasks"] = {}
        for subject in spec.subjects:
            name = f"statepost_mmlu_{subject}"
            r = results["results"].get(name, {})
            record["subtasks"][subject] = {
                "task": name,
                "acc": _num(r.get("acc,none")),
                "stderr": _num(r.get("acc_stderr,none")),
                "n": int(n_samples.get(name, {}).get("effective", 0)),
            }
        record["categories"] = {}
        for cat in MMLU_CATEGORIES:
            name = f"statepost_mmlu_{cat}"
            r = (results.get("groups") or {}).get(name) or results["results"].get(name)
            if r:
                record["categories"][cat] = {"task": name, "acc": _num(r.get("acc,none")),
                                             "stderr": _num(r.get("acc_stderr,none"))}
    return record
