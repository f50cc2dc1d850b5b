import json
import sys

sys.path.insert(0, workflow.basedir)

from statepost import benchmarks as bench_facts
from statepost import checks
from statepost import config as cfglib
from statepost import io as iolib
from statepost import local
from statepost import report as report_lib
from statepost.io import ConfigError
from statepost.report import factorial as factorial_lib
from statepost.report import trajectory as trajectory_lib

# Every config file (config/config.yaml, or each --configfile) is first read by the one strict
# reader: a duplicate key, a non-UTF-8 byte or a YAML error is named with file:line:column before
# any job. Snakemake's own reader keeps the last of two equal keys silently and reports a syntax
# error without file or line; it reads a --configfile before the workflow starts, so there a syntax
# error stops Snakemake first (`python -m statepost.config FILE` names its place; config/README.md).
DEFAULT_CONFIGFILE = "config/config.yaml"
try:
    cfglib.read_config_files(workflow.overwrite_configfiles or [DEFAULT_CONFIGFILE])
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# A --configfile replaces the paper config instead of merging over it, so a toy run never
# inherits a paper-only key; --config KEY=VALUE still overrides either.
if not workflow.overwrite_configfiles:

    configfile: DEFAULT_CONFIGFILE


try:
    cfglib.validate(config)
    local.check_paths(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# Every output of an experiment is under its own root, results/{experiment}/, so the toy and the paper
# (or two variants of one) never plan to overwrite each other's files.
RESULTS = f"results/{config['experiment']}"
DATA_DIR = f"{RESULTS}/data"

# In the order of workflow/tasks/benchmarks.yaml (target first), whatever the config's key order.
BENCHMARKS = [b for b in bench_facts.NAMES if b in config["benchmarks"]]
SEEDS = config["seeds"]
RUNS = cfglib.run_order(config)
MODELS = cfglib.model_names(config)


# The models saved along runs' training (runs.<run>.trajectory): {name, run, seed, step}
TRAJECTORY = cfglib.trajectory_models(config)
# The states x signals factorial (config/factorial.yaml), or None
FACTORIAL = config["factorial"]


def trajectory_dirs(run, seed):
    """{step: model directory} of a run's trajectory, for one seed."""
    return {
        t["step"]: model_path(t["name"])
        for t in TRAJECTORY
        if (t["run"], str(t["seed"])) == (run, str(seed))
    }


def data_folder(benchmark):
    """A benchmark's folder: its splits and their manifest, which its data rule writes (--out)."""
    return f"{DATA_DIR}/{benchmark}"


def data_files(benchmark):
    splits = config["benchmarks"][benchmark]["splits"]
    return [f"{data_folder(benchmark)}/{split}.jsonl" for split in splits]


def data_manifest(benchmark):
    return f"{data_folder(benchmark)}/manifest.json"


def model_path(name):
    return f"{RESULTS}/models/{name}"


def score_path(model, benchmark):
    return f"{RESULTS}/scores/{model}/{benchmark}.json"


def samples_path(model, benchmark):
    """lm-eval's per-sample log beside the score file (the report pairs changes over its items)."""
    return str(iolib.samples_path(score_path(model, benchmark)))


def all_scores():
    return [score_path(m, b) for m in MODELS for b in BENCHMARKS]


def all_samples():
    return [samples_path(m, b) for m in MODELS for b in BENCHMARKS]


def resources_for(group, run=None):
    """Snakemake resources of a rule group; memory and runtime grow with each retry."""
    res = cfglib.run_resources(config, group, run)
    out = dict(
        gpu=res["gpu"],
        mem_mb=lambda wc, attempt, m=res["mem_mb"]: m * attempt,
        runtime=lambda wc, attempt, t=res["runtime"]: t * attempt,
    )
    if res.get("gpu_model"):
        out["gpu_model"] = res["gpu_model"]
    return out, res["cpus"]


# Snakemake deletes a job's log when the job starts (a retry, or the next Snakemake after a kill reruns
# it), so every attempt also goes, under a dated header, to {log}.attempts, which Snakemake never
# touches: the log holds the latest attempt, {log}.attempts all of them (README, "After a kill").
# (The header starts on a new line: a killed attempt may end in the middle of one.)
LOG_START = (
    "printf '\\n===== attempt started %s on %s =====\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" "
    '"$(hostname)" | tee -a {log}.attempts > {log}; '
)
TO_LOG = " 2>&1 | tee -a {log}.attempts >> {log}"


def accelerate_config(run):
    """A run's accelerate config file for several GPUs (resources.train.accelerate_config), or none."""
    return cfglib.run_resources(config, "train", run).get("accelerate_config") or "none"


def json_arg(obj):
    return json.dumps(obj, sort_keys=True)


# Each rule's params are exactly the settings that change its outputs, so that Snakemake reruns
# what an edit affects and nothing else (config/README.md lists the settings that change nothing).
def data_settings(benchmark):
    """What defines a benchmark's rows: its entry without the scoring and probe settings; for a local
    source, also the sha256 of its files (editing a file reruns, a touch does not)."""
    bench = config["benchmarks"][benchmark]
    out = {k: v for k, v in bench.items() if k not in ("eval", "probe_split")}
    if bench["source"] == "local":
        out["sha256"] = local.benchmark_fingerprint(bench["path"], bench["splits"])
    return out


def base_settings():
    """The base model's entry; a local directory's files' sha256 with it (editing a file reruns, a touch does not)."""
    base = config["base_model"]
    if base["source"] == "local":
        return {**base, "sha256": local.model_fingerprint(base["path"])}
    return base


def eval_settings(benchmark):
    """The scoring settings that change scores. Not batch_size: it is passed as a resource, because
    lm-eval's scores do not depend on it (up to float reductions in padded batches, which we accept).
    """
    return {
        k: v
        for k, v in config["benchmarks"][benchmark]["eval"].items()
        if k != "batch_size"
    }


def tracking_names():
    """The config's tracking as the training script's --tracking: none, or names joined by commas. A
    resource, not a param: it changes no weight."""
    names = config["tracking"]
    return names if isinstance(names, str) else ",".join(names)


def eval_batch_size(wildcards):
    return config["benchmarks"][wildcards.benchmark]["eval"]["batch_size"]


def all_targets():
    return (
        [
            f"{RESULTS}/tables/scores.md",
            f"{RESULTS}/tables/claims.md",
            f"{RESULTS}/figures/retention_vs_gain.png",
        ]
        + ([f"{RESULTS}/figures/trajectory.png"] if TRAJECTORY else [])
        + ([f"{RESULTS}/tables/effects.md"] if FACTORIAL else [])
    )


def trajectory_finals():
    """The own models of the runs and seeds that have a trajectory."""
    return list(dict.fromkeys(f"{t['run']}/seed{t['seed']}" for t in TRAJECTORY))


def train_inputs(run):
    deps = cfglib.run_deps(config["runs"][run])
    data = config["runs"][run]["states"]["data"]

    def inputs(wildcards):
        paths = {
            role: model_path(cfglib.run_model(config, name, wildcards.seed))
            for role, name in deps.items()
        }
        paths["data"] = data_files(data)
        return paths

    return inputs


def path_param(path):
    """A folder a rule's script needs, as a param given from the value the rule's paths are built from (RESULTS,
    DATA_DIR). As a function of the job's output it is a derived param, which Snakemake leaves out of the params
    it records for its params-changed rerun trigger: a path is no setting (the outputs move with it), and the jobs
    finished before it was a param would otherwise all rerun."""
    return lambda wildcards, output: path


def teacher_arg(wildcards, input):
    return f"--teacher {input.teacher}" if "teacher" in input.keys() else ""


def base_model_inputs(wildcards):
    # The toy corpus must leave out every evaluation row, so the toy build reads the data.
    if config["base_model"]["source"] == "toy":
        return [data_manifest(b) for b in BENCHMARKS]
    return []


def base_data_arg(wildcards, input):
    """The toy's --data-dir, where its inputs (the benchmarks' manifests) are; no data for other sources. (A
    function of the input, as path_param's, so that Snakemake does not record it.)"""
    return f"--data-dir {DATA_DIR}" if len(input) else ""


def base_model_benchmarks():
    """The toy corpus leaves out every evaluation row: it depends on what defines the rows, not on scoring."""
    if config["base_model"]["source"] == "toy":
        return {b: data_settings(b) for b in BENCHMARKS}
    return {}


def report_models():
    """Every evaluated model with what the report needs to know about it. The order (base, then runs
    grouped by their (state source, signal) pair, then by name and seed) does not depend on the
    order of keys in the config, so reordering the config reruns nothing."""
    models = [{"name": "base", "run": "base", "seed": None}]
    for run in sorted(RUNS, key=cfglib.method_order_key(config)):
        deps = cfglib.run_deps(config["runs"][run])
        for seed in sorted(SEEDS):
            models.append(
                {
                    "name": f"{run}/seed{seed}",
                    "run": run,
                    "seed": seed,
                    "init": deps["init"],
                    "teacher": deps.get("teacher"),
                    "signal": config["runs"][run]["signal"]["type"],
                    "states": config["runs"][run]["states"]["source"],
                }
            )
    return models


# Each report rule's outputs are the files its script writes, as the module that writes them lists them
# (statepost.report.output_paths, and its factorial and trajectory modules'); report.smk gives those that
# Snakemake's HTML report (snakemake --report) shows a caption, a category and labels, by their path under RESULTS.
TABLES_DIR = f"{RESULTS}/tables"
FIGURES_DIR = f"{RESULTS}/figures"


def with_report(paths, shown):
    """``paths`` as one output entry, the files of ``shown`` ({path under RESULTS: report() settings}) wrapped in
    report(): one entry, so that each file is declared once (Snakemake refuses a file in two entries). Settings
    for a file that ``paths`` lacks (a renamed output) stop the DAG here, not vanish from the HTML report.
    """
    under = {str(p).removeprefix(f"{RESULTS}/"): str(p) for p in paths}
    missing = sorted(set(shown) - set(under))
    if missing:
        raise WorkflowError(
            f"report settings for files no report script writes: {', '.join(missing)}"
        )
    return [report(p, **shown[rel]) if rel in shown else p for rel, p in under.items()]


def diagnostics_path(model):
    return f"{RESULTS}/diagnostics/{model}.json"


def probe_splits():
    """{retention benchmark: probe split}: where the diagnostics' off-task states come from."""
    return {
        b: config["benchmarks"][b]["probe_split"]
        for b in BENCHMARKS
        if config["benchmarks"][b]["probe_split"]
    }


def diagnostics_data():
    """The files the diagnostics read: GSM8K's evaluation split, and each probe split with the splits the
    evaluation reads of its benchmark (a probe row that is also there is left out)."""
    files = [
        f"{data_folder(b)}/{bench_facts.get(b).eval_split}.jsonl"
        for b in BENCHMARKS
        if b == bench_facts.TARGET
    ]
    for b, split in probe_splits().items():
        files += [
            f"{data_folder(b)}/{s}.jsonl" for s in (*bench_facts.get(b).splits, split)
        ]
    return files


def diagnostics_settings():
    """The diagnostics settings that change a diagnostics file: not state_nll (the training rules' resource)."""
    return {k: v for k, v in config["diagnostics"].items() if k != "state_nll"}
