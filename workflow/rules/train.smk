# One named rule per run, so `snakemake --forcerun sft_stress` reruns that run and exactly its
# dependents. Edges come from the run's config: its init model and, for teacher_kl, its teacher.
# Its params are what changes its weights; when it checkpoints and logs, where it sends its metrics
# (tracking), and on how many GPUs it runs, are resources (they never trigger a rerun).


for _run in RUNS:
    _res, _cpus = resources_for("train", _run)

    rule:
        name:
            _run
        input:
            unpack(train_inputs(_run)),
        output:
            model=directory(f"{RESULTS}/models/{_run}/seed{{seed}}"),
            # the models along its training (runs.<run>.trajectory), evaluated as the final one is
            trajectory=[
                directory(f"{RESULTS}/models/{_run}/step{step}/seed{{seed}}")
                for step in sorted(config["runs"][_run]["trajectory"])
            ],
        log:
            f"{RESULTS}/logs/train/{_run}/seed{{seed}}.log",
        conda:
            "../../envs/train.yaml"
        threads: _cpus
        resources:
            **_res,
            **cfglib.run_runtime(config, _run),
            state_nll_every=cfglib.state_nll_every(config),
            tracking=tracking_names(),
            accelerate_config=accelerate_config(_run),
        params:
            run_json=lambda wc, r=_run: json_arg(
                cfglib.resolve_run(config, r, int(wc.seed))
            ),
            state_dir=lambda wc, r=_run: f"{RESULTS}/.state/{r}/seed{wc.seed}",
            tracking_dir=lambda wc, r=_run: f"{RESULTS}/tracking/{r}/seed{wc.seed}",
            teacher=teacher_arg,
            data_dir=path_param(DATA_DIR),
            trajectory=lambda wc, r=_run: json_arg(trajectory_dirs(r, wc.seed)),
        shell:
            LOG_START
            + (
                "python -m statepost.gpus --gpus {resources.gpu} --accelerate-config {resources.accelerate_config:q} "
                "--launch -- scripts/train.py "
                "--run-json {params.run_json:q} --init {input.init} {params.teacher} "
                "--checkpoint-every {resources.checkpoint_every} --checkpoint-keep {resources.checkpoint_keep} "
                "--log-every {resources.log_every} --state-nll-every {resources.state_nll_every} "
                "--tracking {resources.tracking} --tracking-dir {params.tracking_dir} "
                "--data-dir {params.data_dir} --out {output.model} --state-dir {params.state_dir} "
                "--trajectory-json {params.trajectory:q}"
            )
            + TO_LOG
