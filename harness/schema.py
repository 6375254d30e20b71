"""The MLflow schema and the Optuna study names: every stage, tag, metric and artifact name the harness
writes and the analysis reads. Writers and readers import these names from here.

One experiment per study:
  parent run (arm variant, task)  stage=study; tags arm, variant (arm; arm@<init sha> when fine-tuned from
                                  init=; arm~<sha> for a checkpoint's scratch twin), task, study, the factors
                                  (FACTORS: model, architecture_sha, tokenizer_sha, init, budget, data...),
                                  provenance (git_commit, command, data, storage, device); params: the run
                                  configuration; metrics best_dev_mcc, test_mcc_mean/std; artifacts study.yaml...
                                  description (mlflow.note.content): the result in one line
    trial run (nested)            stage=trial, trial_number, trial_state (COMPLETE/PRUNED), fail_reason,
                                  grad_accumulation; params: the sampled hyperparameters; best_dev_mcc; per
                                  epoch epoch_train_loss, epoch_dev_* (step = epoch)
    final run (nested)            stage=final, seed, grad_accumulation; test_*, dev_* (of the selected
                                  checkpoint), cost; per epoch epoch_train_loss, epoch_dev_*; confusion
                                  matrix, learning curve, predictions; the model (save_models=)
  Every run of a cell is named `<variant> | <task>` (+ ` | trial N`, ` | seed S`), and its splits are logged as
  MLflow dataset inputs (name = task, digest = the split's fingerprint, context = train/dev/test).
  analysis run                    stage=analysis; the report folder
Elsewhere: stage=pretrain (experiment `pretrain`), stage=tokenizer (`tokenizers`), stage=leakage (`leakage`),
and under `mlflow run` the launcher's own run, stage=launch, pointing at the study's experiment.

Optuna: one study per (study, arm variant, task) named `study/variant/task` (objective `dev_mcc`; user attributes
arm, variant, task, study, the MLflow experiment and parent run), and its final seeds' queue
`study/variant/task/final` (user attribute `kind`: not a tuning study; the seed is a user attribute, not a
parameter, so that no dashboard ranks seeds by "importance").
"""

from __future__ import annotations

from typing import Any


class Stage:
    STUDY = "study"  # the parent run of an (arm variant, task)
    TRIAL = "trial"
    FINAL = "final"
    ANALYSIS = "analysis"
    PRETRAIN = "pretrain"
    TOKENIZER = "tokenizer"
    LAUNCH = "launch"  # the run `mlflow run` opens itself, pointing at the results
    LEAKAGE = "leakage"  # `python -m harness leakage`: shared sequences within and across a GUE folder's tasks


class Tag:
    STAGE = "stage"
    PARENT = "mlflow.parentRunId"  # MLflow's own
    # what a parent run is: its identity, and the factors of its arm variant
    STUDY = "study"
    ARM = "arm"
    VARIANT = "variant"
    TASK = "task"
    STUDY_UID = "study_uid"  # tells a study from a namesake in another storage
    OPTUNA_STUDY = "optuna_study"
    FAMILY = "family"
    MODEL = "model"
    TOKENIZER = "tokenizer"
    TOKENIZER_SOURCE = "tokenizer_source"
    INIT = "init"  # scratch, or the sha256 (16 hex digits) of the weights fine-tuned from
    MODE = "mode"  # finetune (every weight trained) | probe (frozen backbone, a head on its cached embeddings)
    INIT_SOURCE = "init_source"
    SHAPE_SOURCE = "shape_source"  # a scratch twin: the checkpoint whose architecture and tokenizer it takes
    PRETRAIN_RUN = "pretrain_run_id"
    PRETRAIN_COST_SOURCE = "pretrain_cost_source"  # where a pretrained arm's inherited cost comes from
    ARCHITECTURE = "architecture"
    ARCHITECTURE_SHA = "architecture_sha"  # hash of the resolved architecture (+ the tuned architecture keys)
    TOKENIZER_SHA = "tokenizer_sha"  # hash of the vocabulary and merges used; `char` for single nucleotides
    SEARCH_SPACE = "search_space"  # the study's space this variant is tuned in (e.g. transformer_scratch)
    N_TRIALS = "n_trials"
    MAX_EPOCHS = "max_epochs"
    PATIENCE = "patience"
    SEEDS = "seeds"
    MAX_LENGTH = "max_length"
    PRECISION = "precision"
    DATA_SHA = "data_sha"  # the task's three splits' content
    COMPILE = "compile"
    # a parent's bookkeeping, as numbers in tags (its metrics are its results)
    BEST_TRIAL = "best_trial_number"
    N_SEEDS = "n_seeds"  # final seeds finished
    BEST_EPOCH_AT_CAP = "best_epoch_at_cap"  # 1 when the best trial was still improving at the epoch cap
    # tuning adequacy, on parent runs
    TUNING_BOUNDARY = "tuning_boundary"  # parameters of the best trial in the outer 5% of their range
    TUNING_BOUNDARY_SIDES = "tuning_boundary_sides"  # the same, with the side: lr:upper, dropout:lower
    # provenance
    GIT_COMMIT = "git_commit"
    COMMAND = "command"
    DATA = "data"
    TASK_SOURCE = "task_source"
    STORAGE = "storage"  # password removed
    DEVICE = "device"
    DEVICE_REQUESTED = "device_requested"
    DETERMINISTIC = "deterministic"  # true: deterministic kernels only (runtime.py), false: the fast defaults
    # trial and final runs
    TRIAL_NUMBER = "trial_number"
    TRAIN_SEED = "train_seed"
    TRIAL_STATE = "trial_state"  # COMPLETE | PRUNED
    FAIL_REASON = "fail_reason"
    SEED = "seed"
    CLAIM_TRIAL = "claim_trial"  # the final seed's trial in the `/final` Optuna study
    # Micro-batches per optimiser step the fit ran with (trial and final runs, and a trial's Optuna user
    # attribute): 1, or more after it ran out of memory and was rerun at the same effective batch size.
    GRAD_ACCUMULATION = "grad_accumulation"
    # After such a rerun: the per-epoch metrics of epochs 1..n hold a first point from the attempt that ran out
    # of memory; the later point at each step is the rerun's.
    OOM_SUPERSEDED_EPOCHS = "oom_superseded_epochs"
    EMBEDDINGS = "embeddings"  # a probe's trial and final runs: each split's embeddings `cached` or `computed`
    MODEL_ERROR = "model_error"  # final runs: why their model could not be logged (the seed still counts)
    REGISTERED_MODEL = "registered_model"  # parent runs: <name>/<version> of the cell's registered model(s)
    # MLflow's own: the run's description in the UI, and where the run came from (the Source column)
    NOTE = "mlflow.note.content"
    RUN_NAME = "mlflow.runName"
    RUN_COLOR = "mlflow.runColor"  # the UI's colour of a run in charts: one per arm, so arms read apart
    SOURCE_NAME = "mlflow.source.name"
    SOURCE_TYPE = "mlflow.source.type"
    SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
    # other stages
    RESULTS_EXPERIMENT = "results_experiment"  # on the launcher run
    ANALYSED_EXPERIMENT = "analysed_experiment"
    CORPUS = "corpus"
    CORPUS_FINGERPRINT = "corpus_fingerprint"


class Init:  # values of Tag.INIT other than a weights' sha
    SCRATCH = "scratch"


class Mode:  # values of Tag.MODE: how a neural arm learns the task (a run without the tag fine-tuned)
    FINETUNE = "finetune"  # every weight is trained
    PROBE = "probe"  # the backbone is frozen; a head is trained on its cached embeddings (harness/probe.py)
    ALL = (FINETUNE, PROBE)


PROBE_SUFFIX = "+probe"  # a probed variant's name: `hf_pretrained@1a2b3c4d+probe`


def variant_name(arm: str, init_weights_sha: str | None = None, shape_sha: str | None = None,
                 mode: str = Mode.FINETUNE) -> str:
    """An arm fine-tuned from a checkpoint is its own variant, `arm@<8 hex digits of the weights' sha256>`; a
    scratch twin of a checkpoint (its architecture and tokenizer, random weights) is `arm~<the same digits>`;
    probed rather than fine-tuned, either ends in `+probe`."""
    name = f"{arm}@{init_weights_sha[:8]}" if init_weights_sha else f"{arm}~{shape_sha[:8]}" if shape_sha else arm
    return name + (PROBE_SUFFIX if mode == Mode.PROBE else "")


# What an arm variant is, as the analysis reads it from its parent runs.
ARM_TAGS = (Tag.ARM, Tag.FAMILY, Tag.MODEL, Tag.TOKENIZER, Tag.INIT, Tag.INIT_SOURCE, Tag.SHAPE_SOURCE,
            Tag.PRETRAIN_RUN, Tag.MODE)
# The factors of a (variant, task): a contrast may vary some of them (analysis/contrasts.py); every other
# one must be equal on a task for the task to enter the contrast.
MODEL_FACTORS = (Tag.MODEL, Tag.ARCHITECTURE_SHA, Tag.TOKENIZER_SHA, Tag.MAX_LENGTH, Tag.INIT, Tag.MODE)
BUDGET_FACTORS = (Tag.N_TRIALS, Tag.MAX_EPOCHS, Tag.PATIENCE, Tag.SEEDS)
FACTORS = (*MODEL_FACTORS, *BUDGET_FACTORS, Tag.PRECISION, Tag.DATA_SHA)
NOT_APPLICABLE = "n/a"  # a factor an arm does not have (a k-mer model's precision): equal to any value


class Metric:
    TEST_MCC = "test_mcc"  # final runs: GUE's metric on test, scored once
    DEV_MCC = "dev_mcc"  # final runs: the selected checkpoint's (per epoch: epoch_dev_mcc)
    # parent runs: their results only, so that the UI's charts of parent runs show the comparison (their
    # bookkeeping numbers are tags: Tag.BEST_TRIAL, Tag.N_SEEDS, trial_count_tag, overlap_tag...)
    BEST_DEV_MCC = "best_dev_mcc"  # also on trial runs: the best epoch's dev MCC
    TEST_MCC_MEAN = "test_mcc_mean"
    TEST_MCC_STD = "test_mcc_std"  # the sample sd (n - 1) over the final seeds; none from one seed
    # cost, on trial and final runs (pretraining also on parents)
    PARAMS = "n_parameters"  # trainable parameters of the model (MLflow's "Parameters" are hyperparameters)
    TRAIN_SECONDS = "train_seconds"
    FLOPS = "flops"
    BEST_EPOCH = "best_epoch"
    PRETRAIN_SECONDS = "pretrain_seconds"
    PRETRAIN_FLOPS = "pretrain_flops"
    PRETRAIN_TOKENS = "pretrain_tokens"
    PRETRAIN_GPU_HOURS = "pretrain_gpu_hours"  # declared with an external checkpoint (or pretrain_cost=)
    # a probed cell's frozen-backbone pass over train, dev and test (once per cell, whatever its trials and seeds
    # reuse from the cache): on its final runs, counted once per cell by the analysis
    EMBED_SECONDS = "embed_seconds"
    EMBED_FLOPS = "embed_flops"
    TOKENS = "tokens"  # pretraining runs, per logged step: tokens trained on so far
    # per epoch (step = epoch), trial and final runs: every per-epoch name starts with epoch_ (a final run's plain
    # dev_* are its selected checkpoint's, a trial's best_dev_mcc its best epoch's)
    EPOCH_PREFIX = "epoch_"
    TRAIN_LOSS = "train_loss"  # logged as epoch_train_loss
    EPOCH_SECONDS = "epoch_seconds"
    # masked-LM pretraining and tokenizers
    MLM_LOSS = "mlm_loss"
    EVAL_MLM_LOSS = "eval_mlm_loss"
    EVAL_MLM_ACCURACY = "eval_mlm_accuracy"
    VOCAB_SIZE_TRAINED = "vocab_size_trained"
    NT_PER_TOKEN = "nt_per_token"
    TOKENS_PER_WINDOW = "tokens_per_window"
    # pretraining and tokenizer runs: corpus windows dropped because they (or the GUE train sequence they were
    # cut from) equal, contain or lie inside a dev/test sequence, either strand
    EXCLUDED_EVAL_OVERLAP = "excluded_eval_overlap"
    # leakage runs
    LEAKAGE_SEQUENCES = "leakage_sequences"  # sequences compared (every split of every task)
    LEAKAGE_SECONDS = "leakage_seconds"  # finding the matches, without reading the files


CLASSIFICATION_METRICS = ("mcc", "f1", "accuracy", "auroc")  # harness.metrics computes them
TEST_METRICS = tuple(f"test_{m}" for m in CLASSIFICATION_METRICS)
COST_METRICS = (Metric.TRAIN_SECONDS, Metric.FLOPS, Metric.PARAMS, Metric.PRETRAIN_SECONDS, Metric.PRETRAIN_FLOPS,
                Metric.PRETRAIN_GPU_HOURS, Metric.EMBED_SECONDS, Metric.EMBED_FLOPS)


def split_metrics(split: str, metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """{'mcc': 0.5} -> {'<prefix><split>_mcc': 0.5}: dev_mcc, test_f1, epoch_dev_mcc, ..."""
    return {f"{prefix}{split}_{name}": value for name, value in metrics.items()}


OVERLAP_PAIRS = (("train", "dev"), ("train", "test"), ("dev", "test"))  # the split pairs a task's overlaps count


def overlap_pair(first: str, second: str, kind: str = "exact") -> str:
    """The key of `TaskData.overlaps` for two splits: `train_test` (exact) or `train_test_contained`."""
    return f"{first}_{second}" if kind == "exact" else f"{first}_{second}_{kind}"


def overlap_metric(pair: str) -> str:
    """Parent-run tag (a count; the name of a metric elsewhere) of an `overlap_pair`: overlap_train_test (sequences of test equal to a train sequence),
    overlap_train_test_contained (test sequences inside, or containing, a train sequence); either strand."""
    return f"overlap_{pair}"


def truncated_metric(split: str) -> str:
    return f"truncated_{split}"


def trial_count_metric(state: str) -> str:  # parent-run tags
    return f"n_trials_{state.lower()}"  # n_trials_complete, n_trials_pruned, n_trials_fail


class Artifact:
    STUDY_FILE = "study.yaml"  # the study file as run: the analysis reads its contrasts here
    SEARCH_SPACE = "search_space.yaml"  # parent runs: the space this cell was tuned in, fixed values, budget
    MODEL = "model"  # final runs (save_models=): the pyfunc model, registered under registered_model_name
    TASK_SUMMARY = "task_summary.json"
    BEST_PARAMS = "best_params.json"
    OPTUNA_HISTORY = "optuna_history.png"
    CONFUSION_MATRIX = "confusion_matrix.png"
    LEARNING_CURVE = "learning_curve.png"
    TEST_PREDICTIONS = "test_predictions.csv"
    CHECKPOINT = "checkpoint"  # a pretraining run's folder: init=runs:/<run_id>/checkpoint
    TOKENIZER = "tokenizer.json"  # final runs of BPE arms, tokenizer runs, checkpoints
    TOKENIZER_TEXT = "tokenizer.txt"  # final runs of other torch arms: the tokenizer's name and version
    MODEL_CONFIG = "model_config.json"  # final runs of torch arms: model class, architecture, init
    REPORT = "report"
    LEAKAGE_TABLE = "leakage.csv"  # per (task, split) pair and kind: matching sequences, same label
    LEAKAGE_SUMMARY = "leakage.md"
    LEAKAGE_HEATMAP = "leakage.png"  # task x task


# ------------------------------------------------------------------------------------------ names
def optuna_study_name(study: str, variant: str, task: str) -> str:
    return f"{study}/{variant}/{task}"


def final_study_name(optuna_study: str) -> str:
    """The queue of a cell's final seeds, beside its tuning study."""
    return f"{optuna_study}/final"


def parent_run_name(variant: str, task: str) -> str:
    """`<variant> | <task>`. The UI's runs table cuts names short: it shows the task in its Dataset column."""
    return f"{variant} | {task}"


def trial_run_name(label: str, number: int, n_trials: int = 10) -> str:
    """`<label> | trial 07`: zero-padded to the budget's width (at least 2), so that names sort by number."""
    return f"{label} | trial {number:0{max(2, len(str(n_trials)))}d}"


def final_run_name(label: str, seed: int) -> str:
    return f"{label} | seed {seed}"


def seed_label(seed: int, seeds: int) -> str:
    """How every console line names a final seed: its value (the tag `seed`, 0-based) and its place."""
    return f"final seed {seed} ({seed + 1}/{seeds})"


def quoted(value: Any) -> str:
    """`value` as a string literal of an MLflow filter. MLflow's grammar has no escape inside a literal (it
    strips the outer quotes and keeps the rest as written), so a value with a ' is written in "...", and one
    with both quote characters cannot be searched for exactly: it is refused rather than matched loosely."""
    from .errors import ParameterError

    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ParameterError(f"{text!r} contains both ' and \": MLflow cannot search for such a name; rename it "
                         "(the study file, task folder or experiment)")


def query(tags: dict[str, Any]) -> str:
    """An MLflow filter string that matches these tags, e.g. query({Tag.STAGE: Stage.FINAL}); any value,
    including a task or study name with a quote, is quoted so that it matches exactly."""
    return " and ".join(f"tags.`{key}` = {quoted(value)}" for key, value in tags.items())
