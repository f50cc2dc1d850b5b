# Tables, figures and the claim verdicts, from every score file (and its per-sample log) and every run's metrics.
REPORT_RES, REPORT_CPUS = resources_for("report")
CLAIMS_FILE = config["claims"]["definitions"]
# A malformed claims file fails here, when the DAG is built, not after the runs it judges.
try:
    cfglib.load_claims(CLAIMS_FILE)
except ConfigError as e:
    raise WorkflowError(str(e)) from None
TABLES = ["scores", "delta_vs_base", "delta_vs_teacher", "retention"]
FIGURES = ["scores", "retention_vs_gain", "training_curves"]
DIAG_FIGURES = ["drift_vs_retention", "state_nll"]


rule report:
    input:
        scores=all_scores(),
        samples=all_samples(),
        models=[model_path(m) for m in MODELS if m != "base"],
        claims=CLAIMS_FILE,
        diagnostics=[diagnostics_path(m) for m in MODELS],
    output:
        tables=expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}",
            table=TABLES,
            ext=["csv", "md", "tex"],
        ),
        scores_table=report(
            f"{RESULTS}/tables/scores.html",
            caption="../report/scores_table.rst",
            category="Tables",
            labels={"#": "1", "table": "scores per run and benchmark"},
        ),
        delta_vs_base=report(
            f"{RESULTS}/tables/delta_vs_base.html",
            caption="../report/delta_vs_base.rst",
            category="Tables",
            labels={"#": "2", "table": "change against the base model"},
        ),
        delta_vs_teacher=report(
            f"{RESULTS}/tables/delta_vs_teacher.html",
            caption="../report/delta_vs_teacher.rst",
            category="Tables",
            labels={"#": "3", "table": "change against the teacher"},
        ),
        retention=report(
            f"{RESULTS}/tables/retention.html",
            caption="../report/retention.rst",
            category="Tables",
            labels={"#": "4", "table": "gain against retention"},
        ),
        claims=report(
            f"{RESULTS}/tables/claims.html",
            caption="../report/claims.rst",
            category="Claims",
            labels={"#": "1", "table": "claim verdicts"},
        ),
        claims_md=f"{RESULTS}/tables/claims.md",
        claims_json=f"{RESULTS}/tables/claims.json",
        scores_figure=report(
            f"{RESULTS}/figures/scores.png",
            caption="../report/scores_figure.rst",
            category="Figures",
            labels={"#": "1", "figure": "scores per benchmark"},
        ),
        retention_vs_gain=report(
            f"{RESULTS}/figures/retention_vs_gain.png",
            caption="../report/retention_vs_gain.rst",
            category="Figures",
            labels={"#": "2", "figure": "gain against retention"},
        ),
        training_curves=report(
            f"{RESULTS}/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Figures",
            labels={"#": "3", "figure": "training curves"},
        ),
        figure_pdfs=expand(f"{RESULTS}/figures/{{figure}}.pdf", figure=FIGURES),
        diagnostics_table=report(
            f"{RESULTS}/tables/diagnostics.html",
            caption="../report/diagnostics_table.rst",
            category="Diagnostics",
            labels={"#": "1", "item": "drift and forgetting per run and seed (table)"},
        ),
        diagnostics_numbers=multiext(
            f"{RESULTS}/tables/diagnostics", ".csv", ".md", ".tex"
        ),
        drift_figure=report(
            f"{RESULTS}/figures/drift_vs_retention.png",
            caption="../report/drift_vs_retention.rst",
            category="Diagnostics",
            labels={"#": "2", "item": "drift against retention (figure)"},
        ),
        state_nll_figure=report(
            f"{RESULTS}/figures/state_nll.png",
            caption="../report/state_nll.rst",
            category="Diagnostics",
            labels={"#": "3", "item": "NLL of the training states per step (figure)"},
        ),
        diagnostics_pdfs=expand(
            f"{RESULTS}/figures/{{figure}}.pdf", figure=DIAG_FIGURES
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
            tables=multiext(f"{RESULTS}/tables/trajectory", ".csv", ".md", ".tex"),
            table=report(
                f"{RESULTS}/tables/trajectory.html",
                caption="../report/trajectory_table.rst",
                category="Tables",
                labels={"#": "5", "table": "scores along training"},
            ),
            figure=report(
                f"{RESULTS}/figures/trajectory.png",
                caption="../report/trajectory_figure.rst",
                category="Figures",
                labels={"#": "4", "figure": "scores along training"},
            ),
            pdf=f"{RESULTS}/figures/trajectory.pdf",
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
            effects=report(
                f"{RESULTS}/tables/effects.html",
                caption="../report/effects_table.rst",
                category="Factorial",
                labels={
                    "#": "1",
                    "item": "effects of state source and signal (table)",
                },
            ),
            cells=report(
                f"{RESULTS}/tables/factorial_cells.html",
                caption="../report/factorial_cells.rst",
                category="Factorial",
                labels={"#": "2", "item": "each run against base (table)"},
            ),
            grid=report(
                f"{RESULTS}/figures/grid.png",
                caption="../report/grid_figure.rst",
                category="Factorial",
                labels={"#": "3", "item": "the grid (figure)"},
            ),
            dose=report(
                f"{RESULTS}/figures/dose_response.png",
                caption="../report/dose_response.rst",
                category="Factorial",
                labels={"#": "4", "item": "dose-response over lambda (figure)"},
            ),
            numbers=expand(
                f"{RESULTS}/tables/{{table}}.{{ext}}",
                table=["effects", "factorial_cells"],
                ext=["csv", "md", "tex"],
            ),
            pdfs=expand(
                f"{RESULTS}/figures/{{figure}}.pdf", figure=["grid", "dose_response"]
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
