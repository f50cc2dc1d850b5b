# One job per (model, benchmark): lm-evaluation-harness with the standard task definitions.
EVAL_RES, EVAL_CPUS = resources_for("evaluate")


rule evaluate:
    input:
        model=lambda wc: model_path(wc.model),
        data=lambda wc: data_files(wc.benchmark),
    output:
        scores=score_path("{model}", "{benchmark}"),
        samples=samples_path("{model}", "{benchmark}"),
    log:
        f"{RESULTS}/logs/evaluate/{{model}}/{{benchmark}}.log",
    conda:
        "../../envs/evaluate.yaml"
    threads: EVAL_CPUS
    resources:
        **EVAL_RES,
        eval_batch_size=eval_batch_size,
    params:
        eval=lambda wc: json_arg(eval_settings(wc.benchmark)),
        device=config["evaluation"]["device"],
        dtype=config["evaluation"]["dtype"],
        backend=config["evaluation"]["backend"],
        data_dir=path_param(DATA_DIR),
        # hf: `accelerate launch` over the job's GPUs (data parallel); vllm: one process, tensor parallel
        launch="--launch --" if config["evaluation"]["backend"] == "hf" else "-- python",
    shell:
        LOG_START
        + (
            "python -m statepost.gpus --gpus {resources.gpu} {params.launch} scripts/evaluate.py "
            "--model-dir {input.model} --model-name {wildcards.model} --benchmark {wildcards.benchmark} "
            "--data-dir {params.data_dir} --eval-json {params.eval:q} --batch-size {resources.eval_batch_size} "
            "--device {params.device} --dtype {params.dtype} --backend {params.backend} "
            "--out {output.scores}"
        )
        + TO_LOG
