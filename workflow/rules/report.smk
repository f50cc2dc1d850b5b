# Tables, figures and the claim verdicts, from every score file (and its per-sample log) and every run's metrics.
REPORT_RES, REPORT_CPUS = resources_for("report")
CLAIMS_FILE = config["claims"]["definitions"]
# A malformed claims file fails here, when the DAG is built, not after the runs it judges.
try:
    cfglib.load_claims(CLAIMS_FILE)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# What Snakemake's HTML report (snakemake --report) shows of the report rule's files (common.smk, with_report).
REPORT_SHOWN = {
    "tables/scores.html": dict(
        caption="../report/scores_table.rst",
        category="Tables",
        labels={"#": "1", "table": "scores per run and benchmark"},
    ),
    "tables/delta_vs_base.html": dict(
        caption="../report/delta_vs_base.rst",
        category="Tables",
        labels={"#": "2", "table": "change against the base model"},
    ),
    "tables/delta_vs_teacher.html": dict(
        caption="../report/delta_vs_teacher.rst",
        category="Tables",
        labels={"#": "3", "table": "change against the teacher"},
    ),
    "tables/retention.html": dict(
        caption="../report/retention.rst",
        category="Tables",
        labels={"#": "4", "table": "gain against retention"},
    ),
    "tables/claims.html": dict(
        caption="../report/claims.rst",
        category="Claims",
        labels={"#": "1", "table": "claim verdicts"},
    ),
    "figures/scores.png": dict(
        caption="../report/scores_figure.rst",
        category="Figures",
        labels={"#": "1", "figure": "scores per benchmark"},
    ),
    "figures/retention_vs_gain.png": dict(
        caption="../report/retention_vs_gain.rst",
        category="Figures",
        labels={"#": "2", "figure": "gain against retention"},
    ),
    "figures/training_curves.png": dict(
        caption="../report/training_curves.rst",
        category="Figures",
        labels={"#": "3", "figure": "training curves"},
    ),
    "tables/diagnostics.html": dict(
        caption="../report/diagnostics_table.rst",
        category="Diagnostics",
        labels={"#": "1", "item": "drift and forgetting per run and seed (table)"},
    ),
    "figures/drift_vs_retention.png": dict(
        caption="../report/drift_vs_retention.rst",
        category="Diagnostics",
        labels={"#": "2", "item": "drift against retention (figure)"},
    ),
    "figures/state_nll.png": dict(
        caption="../report/state_nll.rst",
        category="Diagnostics",
        labels={"#": "3", "item": "NLL of the training states per step (figure)"},
    ),
}


rule report:
    input:
        scores=all_scores(),
        samples=all_samples(),
        models=[model_path(m) for m in MODELS if m != "base"],
        claims=CLAIMS_FILE,
        diagnostics=[diagnostics_path(m) for m in MODELS],
    output:
        with_report(
            report_lib.output_paths(TABLES_DIR, FIGURES_DIR, diagnostics=True),
            REPORT_SHOWN,
        ),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/report.yaml"
    threads: REPORT_CPUS
    resources:
        **REPORT_RES,
    params:
        models=json_arg(report_models()),
        roles=json_arg(config["claims"]["roles"]),
        thresholds=json_arg(config["claims"]["thresholds"]),
        benchmarks=json_arg(BENCHMARKS),
        root=path_param(RESULTS),
    shell:
        LOG_START
        + (
            "python scripts/report.py --scores-dir {params.root}/scores --metrics-dir {params.root}/models "
            "--models-json {params.models:q} --roles-json {params.roles:q} "
            "--thresholds-json {params.thresholds:q} --benchmarks-json {params.benchmarks:q} "
            "--claims {input.claims:q} --diagnostics-dir {params.root}/diagnostics "
            "--tables-dir {params.root}/tables --figures-dir {params.root}/figures"
        )
        + TO_LOG


# Learning curves, when a run names trajectory steps: its scores from the base (step 0) through the models it saved
# along its training to its own model.
if TRAJECTORY:

    rule trajectory:
        input:
            scores=[
                score_path(m, b)
                for m in [
                    "base",
                    *trajectory_finals(),
                    *(t["name"] for t in TRAJECTORY),
                ]
                for b in BENCHMARKS
            ],
            models=[model_path(m) for m in trajectory_finals()],
        output:
            with_report(
                trajectory_lib.output_paths(TABLES_DIR, FIGURES_DIR),
                {
                    "tables/trajectory.html": dict(
                        caption="../report/trajectory_table.rst",
                        category="Tables",
                        labels={"#": "5", "table": "scores along training"},
                    ),
                    "figures/trajectory.png": dict(
                        caption="../report/trajectory_figure.rst",
                        category="Figures",
                        labels={"#": "4", "figure": "scores along training"},
                    ),
                },
            ),
        log:
            f"{RESULTS}/logs/trajectory.log",
        conda:
            "../../envs/report.yaml"
        threads: REPORT_CPUS
        resources:
            **REPORT_RES,
        params:
            trajectory=json_arg(TRAJECTORY),
            benchmarks=json_arg(BENCHMARKS),
            root=path_param(RESULTS),
        shell:
            LOG_START
            + (
                "python scripts/trajectory.py --scores-dir {params.root}/scores --models-dir {params.root}/models "
                "--trajectory-json {params.trajectory:q} --benchmarks-json {params.benchmarks:q} "
                "--tables-dir {params.root}/tables --figures-dir {params.root}/figures"
            )
            + TO_LOG


# The states x signals factorial, when the config names its runs (config/factorial.yaml): the effects of state source
# and signal, the dose-response over lambda, and each run against base.
if FACTORIAL:
    FACTORIAL_RUNS = checks.factorial_runs(FACTORIAL)
    FACTORIAL_MODELS = ["base"] + [
        cfglib.run_model(config, r, s) for r in FACTORIAL_RUNS for s in SEEDS
    ]

    rule factorial:
        input:
            scores=[score_path(m, b) for m in FACTORIAL_MODELS for b in BENCHMARKS],
            samples=[samples_path(m, b) for m in FACTORIAL_MODELS for b in BENCHMARKS],
            diagnostics=[diagnostics_path(m) for m in FACTORIAL_MODELS],
            models=[model_path(m) for m in FACTORIAL_MODELS if m != "base"],
        output:
            with_report(
                factorial_lib.output_paths(TABLES_DIR, FIGURES_DIR),
                {
                    "tables/effects.html": dict(
                        caption="../report/effects_table.rst",
                        category="Factorial",
                        labels={
                            "#": "1",
                            "item": "effects of state source and signal (table)",
                        },
                    ),
                    "tables/factorial_cells.html": dict(
                        caption="../report/factorial_cells.rst",
                        category="Factorial",
                        labels={"#": "2", "item": "each run against base (table)"},
                    ),
                    "figures/grid.png": dict(
                        caption="../report/grid_figure.rst",
                        category="Factorial",
                        labels={"#": "3", "item": "the grid (figure)"},
                    ),
                    "figures/dose_response.png": dict(
                        caption="../report/dose_response.rst",
                        category="Factorial",
                        labels={
                            "#": "4",
                            "item": "dose-response over lambda (figure)",
                        },
                    ),
                },
            ),
        log:
            f"{RESULTS}/logs/factorial.log",
        conda:
            "../../envs/report.yaml"
        threads: REPORT_CPUS
        resources:
            **REPORT_RES,
        params:
            factorial=json_arg(FACTORIAL),
            runs=json_arg({r: config["runs"][r] for r in FACTORIAL_RUNS}),
            seeds=json_arg(SEEDS),
            benchmarks=json_arg(BENCHMARKS),
            scale=config["claims"]["thresholds"]["substantial_loss"],
            root=path_param(RESULTS),
        shell:
            LOG_START
            + (
                "python scripts/factorial.py --scores-dir {params.root}/scores --models-dir {params.root}/models "
                "--diagnostics-dir {params.root}/diagnostics --factorial-json {params.factorial:q} "
                "--runs-json {params.runs:q} --seeds-json {params.seeds:q} --benchmarks-json {params.benchmarks:q} "
                "--color-scale {params.scale} "
                "--tables-dir {params.root}/tables --figures-dir {params.root}/figures"
            )
            + TO_LOG
