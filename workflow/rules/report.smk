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


rule report:
    input:
        scores=all_scores(),
        samples=all_samples(),
        models=[model_path(m) for m in MODELS if m != "base"],
        claims=CLAIMS_FILE,
        diagnostics=[diagnostics_path(m) for m in MODELS],
    output:
        tables=multiext("results/tables/scores", ".csv", ".md", ".tex"),
        deltas=expand(
            "results/tables/{table}.{ext}", table=TABLES[1:], ext=["csv", "md", "tex"]
        ),
        claims=report(
            "results/tables/claims.md",
            caption="../report/claims.rst",
            category="Claims",
        ),
        claims_json="results/tables/claims.json",
        figures=report(
            expand(
                "results/figures/{figure}.{ext}", figure=FIGURES, ext=["png", "pdf"]
            ),
            caption="../report/figures.rst",
            category="Figures",
        ),
        diagnostics_table=report(
            "results/tables/diagnostics.md",
            caption="../report/diagnostics_table.rst",
            category="Diagnostics",
        ),
        diagnostics_numbers=multiext("results/tables/diagnostics", ".csv", ".tex"),
        drift_figure=report(
            multiext("results/figures/drift_vs_retention", ".png", ".pdf"),
            caption="../report/drift_vs_retention.rst",
            category="Diagnostics",
        ),
        state_nll_figure=report(
            multiext("results/figures/state_nll", ".png", ".pdf"),
            caption="../report/state_nll.rst",
            category="Diagnostics",
        ),
    log:
        "results/logs/report.log",
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
    shell:
        LOG_START
        + (
            "python scripts/report.py --scores-dir results/scores --metrics-dir results/models "
            "--models-json {params.models:q} --roles-json {params.roles:q} "
            "--thresholds-json {params.thresholds:q} --benchmarks-json {params.benchmarks:q} "
            "--claims {input.claims:q} --diagnostics-dir results/diagnostics "
            "--tables-dir results/tables --figures-dir results/figures"
        )
        + TO_LOG
