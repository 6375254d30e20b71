"""Statistics, plots and reports over the harness's MLflow runs: paired tests of the pretraining, BPE
and architecture effects, with cost. ``python -m analysis --experiment NAME``; see analysis/cli.py."""
