"""statepost: post-training as (state source, signal) pairs.

The library behind the Snakemake workflow: data, models, the one training loop,
evaluation with lm-evaluation-harness, and the report.
"""

__version__ = "0.1.0"
