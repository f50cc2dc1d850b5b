# One rule per benchmark: results/{experiment}/data/{benchmark}/{split}.jsonl in the standard columns, and a manifest.
DATA_RES, DATA_CPUS = resources_for("data")

for _bench in BENCHMARKS:

    rule:
        name:
            f"data_{_bench}"
        output:
            splits=data_files(_bench),
            manifest=data_manifest(_bench),
        log:
            f"{RESULTS}/logs/data/{_bench}.log",
        conda:
            "../../envs/train.yaml"
        threads: DATA_CPUS
        resources:
            **DATA_RES,
        params:
            bench=json_arg(data_settings(_bench)),
            name=_bench,
            out=path_param(data_folder(_bench)),
        shell:
            LOG_START
            + (
                "python scripts/prepare_data.py --benchmark {params.name} --config-json {params.bench:q} "
                "--out {params.out}"
            )
            + TO_LOG
