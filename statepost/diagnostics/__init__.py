"""How far a trained model's states and next-token distributions have moved from the base model's (the ``diagnose``
rule; the report reads them in :mod:`statepost.report.diagnostics`).

* :mod:`.measures`: the per-state quantities (KL both ways, NLL, entropy) in bounded memory, and their token means;
* :mod:`.statesets`: the three fixed state sets (dataset, the model's own samples, off-task probes) and one model
  measured against the base on them.
"""
