"""dna-harness: a fair, tracked evaluation harness for DNA sequence models.

Arms (model x tokenizer x initialisation) are tuned with the same Optuna budget on GUE-style
tasks, retrained with several seeds, evaluated once on test, and tracked in MLflow.
"""

__version__ = "0.1.0"
