"""Statistics, plots and reports over the harness's MLflow runs (paired tests of the pretraining, BPE
and architecture effects, with cost). Reads only what `harness` logs: final runs tagged stage=final."""
