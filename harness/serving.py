"""Registered, servable models of final runs: a fitted arm as an MLflow pyfunc model that scores raw DNA.

    info = log_model(fitted, input_example=task.dev.sequences[:5])   # inside the final run (name "model")
    version = register(info.model_uri, registered_model_name("smoke", "unet_char", "synthetic/motif_binary"),
                       tags={...})
    mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}").predict(["ACGTTATAAAAG..."])
    mlflow models serve -m models:/<name>/<version> --env-manager local -p 5001

What a logged model holds (nothing pickled; loading runs no code but this file and the harness's):
  - `serving.py`: this file, the model's code (MLflow "models from code": `python_model` is this file's path,
    and its last line hands MLflow the model object with `mlflow.models.set_model`);
  - `code/harness/`: the harness package as it was when the model was logged (`code_paths`), which rebuilds the
    network or pipeline. MLflow puts it first on sys.path, so a server (a fresh process) runs the model with
    the code it was trained with, whatever harness is installed there; a process that has already imported
    harness (the harness itself, its tests) keeps the one it has;
  - `artifacts/export/`: what `Fitted.export` wrote (harness/arms/base.py): `weights.safetensors` (a torch
    arm's weights, or a scikit-learn arm's learnt arrays), `config.json` (how to rebuild the predictor around
    them) and, for a BPE arm, its `tokenizer.json`; for an hf arm, `backbone/config.json` (its transformers
    config) and `tokenizer/` (the checkpoint's tokenizer files);
  - the signature, an input example (a few dev sequences) and `requirements.txt`: the installed versions (the
    harness's pins) of the packages prediction imports.

Input: a list of sequences, a pandas Series, or a DataFrame with a `sequence` column (or a single column);
served, `{"inputs": ["ACGT...", ...]}` or `{"dataframe_split": {"columns": ["sequence"], "data": [[...]]}}`.
The signature's input is one unnamed string column: MLflow then accepts a plain list (it hands `predict` a
one-column frame), which a column named `sequence` would refuse. Sequences are normalised as task files are
(harness/data.py: upper case, IUPAC codes -> N; anything else is an error naming the row, from 1).
Output: a DataFrame with columns prob_0 .. prob_{C-1}, class probabilities summing to 1 per row (served as
`{"predictions": [{"prob_0": ..., "prob_1": ...}, ...]}`). A torch model runs on the GPU when there is one
(bf16 autocast, as the harness scores on a GPU), else on the CPU in fp32.

Registered names (`registered_model_name`): `<study>.<variant>.<task>`, with `/` (a task's family/name)
written `_` and any character outside RFC 3986's unreserved set (letters, digits, `-` `.` `_` `~`) written `-`,
so that the name is valid in the registry (no `/` or `:`) and in a `models:/<name>/<version>` URI, where `@`
would start an alias: `smoke.unet_char.synthetic_motif_binary`, `gue.convnova_char-1a2b3c4d.tf_0` (fine-tuned
from checkpoint 1a2b3c4d), `gue.dnabert2_scratch~1a2b3c4d.prom_prom_300_tata` (its scratch twin).

`save_models=best`: every final seed logs its model (seeds may run in different worker processes); once all
have finished, the registering process finds each seed's model from its run (`logged_model_id`,
`model_uri`), registers the seed with the best dev MCC (test never chooses) and deletes the others'
logged models (`discard`). Deleting only marks them deleted; `mlflow gc` (or `mlflow gc --logged-model-ids
<id,...>`) removes their artifacts for good. Their runs keep every metric.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from safetensors.numpy import load_file
from safetensors.torch import load_model
from sklearn.pipeline import Pipeline
from torch import nn

# Absolute imports: MLflow runs this file by its path as the logged model's code (a module named
# `code_model_<uuid>`, outside any package), with the model's copy of `harness` on sys.path.
import harness
from harness.arms import ARMS
from harness.arms.base import EXPORT_CONFIG, EXPORT_WEIGHTS, Fitted
from harness.data import normalise_sequences
from harness.errors import CheckpointError, InputError
from harness.models import DEFAULT_DROPOUT, MODELS
from harness.runtime import Runtime
from harness.schema import Artifact
from harness.tokenizers import BPETokenizer, CharTokenizer, DNATokenizer, TokenizedSplit
from harness.train import predict as predict_tokens

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its final run
EXPORT = "export"  # the pyfunc artifact (a folder) that holds the exported predictor
SEQUENCE_COLUMN = "sequence"
# What prediction imports, directly or through harness.arms (optuna and pyyaml: the arms' study checks). Their
# versions are the harness's pins; training-only packages (matplotlib, baycomp) stay out, and transformers too
# except for the hf arms' models (`prediction_requirements`).
PREDICTION_PACKAGES = ("torch", "mlflow", "numpy", "pandas", "scikit-learn", "scipy", "safetensors", "tokenizers",
                       "optuna", "pyyaml")


# ------------------------------------------------------------------------------------------------ names
def registered_model_name(study: str, variant: str, task: str) -> str:
    """`<study>.<variant>.<task>`, each part made safe for the registry and models:/ URIs (module docstring)."""
    return ".".join(safe_name_part(part) for part in (study, variant, task))


def safe_name_part(text: str) -> str:
    unreserved = "-._~"
    return "".join(c if (c.isascii() and c.isalnum()) or c in unreserved else "_" if c == "/" else "-"
                   for c in text)


# ---------------------------------------------------------------------------- rebuilding the predictor
class Predictor(Protocol):
    num_classes: int

    def predict(self, sequences: list[str]) -> np.ndarray:
        """Class probabilities [N, num_classes] of normalised sequences."""
        ...


@dataclass
class TorchPredictor:
    model: nn.Module
    tokenizer: DNATokenizer
    max_length: int | None  # the token cap the model was trained and scored with
    runtime: Runtime
    num_classes: int

    def predict(self, sequences: list[str]) -> np.ndarray:
        if not sequences:
            return np.empty((0, self.num_classes), dtype=np.float32)
        return predict_tokens(self.model, self.tokens(sequences), self.tokenizer.pad_id, self.runtime)

    def tokens(self, sequences: list[str]) -> TokenizedSplit:
        """The sequences laid out as `harness.tokenizers.tokenize` lays out a split, without its caches: a server
        would otherwise keep every request in memory and write it to disk."""
        encoded = self.tokenizer.encode(sequences)
        truncated = sum(len(ids) > self.max_length for ids in encoded) if self.max_length else 0
        if truncated:
            log.warning("%d of %d sequences exceed the model's max_length=%d tokens and are truncated", truncated,
                        len(encoded), self.max_length)
        encoded = [ids[:self.max_length] for ids in encoded]
        offsets = np.concatenate(([0], np.cumsum([len(ids) for ids in encoded]))).astype(np.int64)
        return TokenizedSplit(np.concatenate(encoded).astype(np.int32), offsets,
                              labels=np.zeros(len(encoded), dtype=np.int64), truncated=truncated)


@dataclass
class SklearnPredictor:
    pipeline: Pipeline
    num_classes: int

    def predict(self, sequences: list[str]) -> np.ndarray:
        if not sequences:
            return np.empty((0, self.num_classes))
        return self.pipeline.predict_proba(sequences)


def load_exported(folder: Path, device: str = "auto") -> Predictor:
    """The predictor `Fitted.export` wrote into `folder`."""
    config = json.loads((folder / EXPORT_CONFIG).read_text())
    loaders = {"torch": load_torch, "sklearn": load_sklearn, "hf": load_hf, "probe": load_probe}
    return loaders[config["kind"]](folder, config, device)


def load_torch(folder: Path, config: dict[str, Any], device: str) -> TorchPredictor:
    """The network rebuilt from its harness.models name and architecture, with the exported weights, in eval
    mode. Dropout is a placeholder: eval mode turns it off."""
    tokenizer = exported_tokenizer(folder, config)
    runtime = Runtime.resolve(device)
    model = MODELS.get(config["model"]).classifier(config["architecture"], tokenizer, config["num_classes"],
                                                   DEFAULT_DROPOUT)
    model.to(runtime.device)
    load_model(model, str(folder / EXPORT_WEIGHTS), strict=True, device=str(runtime.device))
    model.eval()
    return TorchPredictor(model, tokenizer, config["max_length"], runtime, config["num_classes"])


def exported_tokenizer(folder: Path, config: dict[str, Any]) -> DNATokenizer:
    """The BPE tokenizer saved beside the weights, or the built-in char tokenizer; either way the one the
    network was trained with (same fingerprint), or an error rather than silently different tokens."""
    tokenizer = BPETokenizer.from_file(folder / Artifact.TOKENIZER) if config["tokenizer"] == "bpe" else CharTokenizer()
    if tokenizer.fingerprint != config["tokenizer_fingerprint"]:
        raise CheckpointError(f"{folder}: the model was trained with tokenizer {config['tokenizer_fingerprint']}, "
                              f"this harness builds {tokenizer.fingerprint}")
    return tokenizer


def load_hf(folder: Path, config: dict[str, Any], device: str) -> TorchPredictor:
    """An hf arm's classifier (harness/arms/hf.py): the backbone rebuilt from its exported transformers config
    (`AutoModel.from_config`, no code but transformers'), the head from config.json, then the exported weights;
    the tokenizer from its exported files (AutoTokenizer), checked against the one it was trained with."""
    from harness.arms.hf import EXPORT_BACKBONE, EXPORT_TOKENIZER
    from harness.models.hf import hf_classifier, load_config, random_backbone
    from harness.tokenizers import HFTokenizer

    tokenizer = HFTokenizer(folder / EXPORT_TOKENIZER)
    if tokenizer.fingerprint != config["tokenizer_fingerprint"]:
        raise CheckpointError(f"{folder}: the model was trained with tokenizer {config['tokenizer_fingerprint']}, "
                              f"its exported files are {tokenizer.fingerprint}")
    runtime = Runtime.resolve(device)
    backbone = random_backbone(load_config(folder / EXPORT_BACKBONE))  # placeholder weights, replaced below
    model = hf_classifier(backbone, config["num_classes"], DEFAULT_DROPOUT, config["pooling"]).to(runtime.device)
    load_model(model, str(folder / EXPORT_WEIGHTS), strict=True, device=str(runtime.device))
    model.eval()
    return TorchPredictor(model, tokenizer, config["max_length"], runtime, config["num_classes"])


def load_probe(folder: Path, config: dict[str, Any], device: str) -> TorchPredictor:
    """A probe (harness/probe.py): its frozen backbone as its arm exports a network (backbone/, any kind above),
    the layer and pooling it reads, and its head (head.safetensors), put back together as one classifier that
    reads raw tokens."""
    from harness.models.probe import ProbedClassifier, ProbeHead

    inner = load_exported(folder / "backbone", device)
    head = ProbeHead(config["hidden_size"], config["num_classes"], config["head"]["head"],
                     config["head"]["head_hidden"])
    load_model(head, str(folder / "head.safetensors"), strict=True)
    model = ProbedClassifier(inner.model, config["layer"], config["pooling"], head).to(inner.runtime.device).eval()
    return TorchPredictor(model, inner.tokenizer, inner.max_length, inner.runtime, config["num_classes"])


def load_sklearn(folder: Path, config: dict[str, Any], device: str) -> SklearnPredictor:
    """The arm's own pipeline (its featurisation and the logistic regression, unfitted), given back the state
    `fit` learnt: `<step>.<attribute>` keys, arrays from safetensors and the rest from the JSON
    (harness/arms/estimators.py). `device` does not apply: scikit-learn runs on the CPU."""
    pipeline = ARMS.get(config["arm"]).pipeline(config["params"], seed=0)  # the seed steers fitting only
    for key, value in {**config["state"], **load_file(str(folder / EXPORT_WEIGHTS))}.items():
        step, attribute = key.split(".", 1)
        setattr(pipeline.named_steps[step], attribute, value)
    return SklearnPredictor(pipeline, config["num_classes"])


# ------------------------------------------------------------------------------------- the pyfunc model
def sequences_of(model_input: Any) -> list[str]:
    """Normalised sequences from what `predict` is given (module docstring)."""
    if isinstance(model_input, str):
        model_input = [model_input]
    if isinstance(model_input, pd.DataFrame):
        if SEQUENCE_COLUMN in model_input.columns:
            model_input = model_input[SEQUENCE_COLUMN]
        elif model_input.shape[1] == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise InputError(f"a DataFrame of sequences needs a {SEQUENCE_COLUMN!r} column or a single column; "
                             f"got columns {list(model_input.columns)}")
    values = pd.Series(list(model_input), dtype=object)
    if values.isna().any():  # str() would make a missing value "nan", which reads as DNA (N A N)
        raise InputError(f"input row {int(values.isna().to_numpy().argmax()) + 1}: missing sequence")
    raw = [str(s) for s in values]
    return normalise_sequences(pd.Series(raw, index=range(1, len(raw) + 1), dtype=object), Path("input row"))


def probability_frame(probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(probs.astype(np.float64), columns=[f"prob_{c}" for c in range(probs.shape[1])])


class SequenceClassifierModel(PythonModel):
    """The pyfunc model: the exported predictor, loaded once, scoring raw sequences."""

    def load_context(self, context: PythonModelContext) -> None:
        self.predictor = load_exported(Path(context.artifacts[EXPORT]))

    # `model_input` is not annotated: MLflow reads an annotation as the input schema, and the signature is ours.
    def predict(self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        return probability_frame(self.predictor.predict(sequences_of(model_input)))


# ------------------------------------------------------------------------------ logging and registering
def log_model(fitted: Fitted, input_example: list[str]) -> ModelInfo:
    """Log `fitted` as the pyfunc model "model" of the active (final) run. MLflow checks the model by loading
    it from what was logged and scoring `input_example` before it returns."""
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / EXPORT
        fitted.export(export)
        exported = json.loads((export / EXPORT_CONFIG).read_text())
        num_classes = exported["num_classes"]
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=__file__,
            artifacts={EXPORT: str(export)},
            code_paths=[str(package_copy(Path(tmp)))],
            pip_requirements=prediction_requirements(network_kind(export)),
            signature=signature(num_classes),
            input_example=list(input_example),
        )


def network_kind(export: Path) -> str:
    """What builds an exported network: its kind, or for a probe its backbone's (an hf one needs transformers)."""
    config = json.loads((export / EXPORT_CONFIG).read_text())
    return network_kind(export / "backbone") if config["kind"] == "probe" else config["kind"]


def signature(num_classes: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([ColSpec("double", f"prob_{c}") for c in range(num_classes)]))


def package_copy(folder: Path) -> Path:
    """A copy of the harness package without compiled bytecode, for the model to carry."""
    source = Path(harness.__file__).parent
    return Path(shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns("__pycache__")))


def prediction_requirements(kind: str = "torch") -> list[str]:
    """The versions installed here (the harness's pins, pyproject.toml / conda.yaml) of PREDICTION_PACKAGES (and
    transformers for an hf arm's model, whose network is transformers'): read from each package, since under
    `mlflow run` with conda the harness itself is not an installed package."""
    packages = PREDICTION_PACKAGES + (("transformers",) if kind == "hf" else ())
    # Without a local version label (torch's `+cpu`, `+cu126`): the serving machine picks its own build.
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in packages]


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of the registered model `name` (created if new) from a logged model's URI, tagged."""
    return mlflow.register_model(model_uri, name, tags=tags)


def logged_model_id(run: Run) -> str | None:
    """The id of the model "model" a final run logged, or None where it logged none (save_models=none, a seed
    that failed first, or a model already discarded): how the process that registers finds a seed's model when
    another process ran that seed. Deleted logged models are not found."""
    found = MlflowClient().search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{MODEL_NAME}'")
    if len(found) > 1:
        raise RuntimeError(f"run {run.info.run_id} logged {len(found)} models named {MODEL_NAME!r}, expected one")
    return found[0].model_id if found else None


def model_uri(model_id: str) -> str:
    """`models:/<model id>` of a logged model: what `register` takes."""
    return f"models:/{model_id}"


def discard(model_id: str) -> None:
    """Delete a final run's logged model that was not registered (`save_models=best`: every seed but the best).
    Its run keeps its metrics and other artifacts; the model is only marked deleted, and `mlflow gc` (or
    `mlflow gc --logged-model-ids <id>`) removes its files for good. Deleting it twice is not an error."""
    MlflowClient().delete_logged_model(model_id)


# MLflow loads a logged model by running this file (models from code) and taking the object set here; its
# load_context then reads the exported predictor. Importing harness.serving runs it too, which only records the
# (unloaded) object in MLflow's module.
mlflow.models.set_model(SequenceClassifierModel())
