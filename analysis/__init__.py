"""Statistics, plots and reports over the harness's MLflow runs: paired tests of the pretraining, BPE
and architecture effects, with cost (being built; it will read the final runs tagged stage=final)."""
