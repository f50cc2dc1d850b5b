# The base model: downloaded from the hub (safetensors only), copied from a local directory, or built
# and pretrained as the toy.
BASE_RES, BASE_CPUS = resources_for("base_model")


rule base_model:
    input:
        base_model_inputs,
    output:
        directory(model_path("base")),
    log:
        f"{RESULTS}/logs/base_model.log",
    conda:
        "../../envs/train.yaml"
    threads: BASE_CPUS
    resources:
        **BASE_RES,
    params:
        base=lambda wc: json_arg(base_settings()),
        benchmarks=json_arg(base_model_benchmarks()),
        data=base_data_arg,
    shell:
        LOG_START
        + (
            "python scripts/base_model.py --config-json {params.base:q} --benchmarks-json {params.benchmarks:q} "
            "{params.data} --out {output}"
        )
        + TO_LOG
