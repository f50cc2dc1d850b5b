"""statepost: post-training as (state source, signal) pairs, as a Snakemake DAG.

snakemake --cores 8 --use-conda                          # the paper's experiment (GPU box)
snakemake --cores 2 --configfile config/toy.yaml         # the offline toy world (CPU, minutes)
"""

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
