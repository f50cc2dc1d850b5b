# One job per model (base and every run x seed): the model against the base model on the diagnostics' three
# fixed state sets (off-task: the retention benchmarks' probe splits, which no score reads). Its params are the
# diagnostics settings that change the file (not state_nll, which is the training rules' runtime setting).
DIAG_RES, DIAG_CPUS = resources_for("diagnose")


rule diagnose:
    input:
        model=lambda wc: model_path(wc.model),
        base=model_path("base"),
        data=diagnostics_data(),
    output:
        f"{RESULTS}/diagnostics/{{model}}.json",
    log:
        f"{RESULTS}/logs/diagnostics/{{model}}.log",
    conda:
        "../../envs/train.yaml"
    threads: DIAG_CPUS
    resources:
        **DIAG_RES,
    params:
        settings=json_arg(diagnostics_settings()),
        benchmarks=json_arg(BENCHMARKS),
        probe_splits=json_arg(probe_splits()),
        data_dir=path_param(DATA_DIR),
    shell:
        LOG_START
        + (
            "python -m statepost.gpus --gpus {resources.gpu} -- python scripts/diagnose.py "
            "--model-dir {input.model} --base-dir {input.base} --model-name {wildcards.model} "
            "--data-dir {params.data_dir} --benchmarks-json {params.benchmarks:q} "
            "--probe-splits-json {params.probe_splits:q} "
            "--settings-json {params.settings:q} --out {output}"
        )
        + TO_LOG
