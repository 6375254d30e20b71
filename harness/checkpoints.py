"""Model checkpoints: their folder layout, where they come from, and what they cost to make.

A checkpoint folder (written by `python -m harness pretrain`):
    harness.json       {"model", "architecture", "tokenizer", "pretraining": {run id, seconds, FLOPs, ...}}
    model.safetensors  the masked-LM's weights (for DNABERT-2 with config.json: the published layout)
    tokenizer.json     the BPE tokenizer it was trained with (single-nucleotide models need none)

DNABERT-2's published folders (config.json + pytorch_model.bin or model.safetensors, tokenizer.json)
are read as well. A source is a local folder, an MLflow artifact URI (`runs:/<run_id>/checkpoint`,
`models:/<name>/<version>`, `mlflow-artifacts:/...`) or, for DNABERT-2, a Hugging Face hub id.

The `hf_*` arms read another kind (`open_hf_checkpoint`): any transformers folder (config.json + weights +
tokenizer files, as `save_pretrained` writes them) whose architecture transformers implements natively. A
config that names custom code (`auto_map`, e.g. DNABERT-2's published one) is refused: the harness never
passes `trust_remote_code`.
Weights are read with safetensors or `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ParameterError
from .models.weights import WEIGHT_FILES, download_from_hub, read_state_dict

COST_FILE = "pretrain_cost.json"  # beside external weights: {"gpu_hours": ..., "flops": ..., "source": "..."}
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:", "dbfs:", "s3://", "gs://", "wasbs://", "file://")
MANIFEST = "harness.json"


def is_mlflow_uri(source: str) -> bool:
    return source.startswith(MLFLOW_SCHEMES)


@functools.cache
def local_path(source: str) -> Path:
    """A local file or folder for `source`, downloading MLflow artifact URIs (once per process)."""
    if is_mlflow_uri(source):
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        except Exception as err:  # MLflow raises several types for a bad run id, path or server
            raise ParameterError(f"{source}: MLflow could not provide this artifact "
                                 f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return Path(source).expanduser()


def looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not is_mlflow_uri(source)


@functools.cache
def tokenizer_file(source: str) -> str:
    """A local tokenizer.json for `source`: a file, a folder holding one, an MLflow artifact URI, or a hub id
    (e.g. zhihan1996/DNABERT-2-117M, whose tokenizer.json is downloaded once; offline, a clear error)."""
    path = local_path(source)
    if not path.exists() and looks_like_hub_id(source):
        path = download_from_hub(source, ("tokenizer.json",), what="tokenizer", fix="tokenizer=<its tokenizer.json>")
    if path.is_dir():
        path = path / "tokenizer.json"
    return str(path)


@dataclass(frozen=True)
class Checkpoint:
    source: str
    folder: Path
    model: str
    architecture: dict[str, Any]
    tokenizer: str  # the tokenizer kind it was trained with: char, bpe, ...
    pretraining: dict[str, Any] = field(default_factory=dict)  # {} for published checkpoints
    tokenizer_fingerprint: str | None = None  # recorded by the harness, to refuse another tokenizer

    @property
    def tokenizer_file(self) -> Path | None:
        path = self.folder / "tokenizer.json"
        return path if path.is_file() else None

    @functools.cached_property
    def declared_cost(self) -> dict[str, Any]:
        """What an external checkpoint's `pretrain_cost.json` declares (its authors' figures), or {}."""
        path = self.folder / COST_FILE
        return read_json(path, ()) if path.is_file() else {}

    @property
    def pretraining_cost(self) -> dict[str, float]:
        """seconds / flops / gpu_hours of making these weights, as far as known: recorded by `harness pretrain`
        (GPU-hours only when it ran on a GPU), else declared in pretrain_cost.json."""
        if "seconds" in self.pretraining:
            cost = {"seconds": float(self.pretraining["seconds"]), "flops": float(self.pretraining["flops"])}
            if str(self.pretraining.get("device", "")).startswith("cuda"):
                cost["gpu_hours"] = cost["seconds"] / 3600
            return cost
        declared = self.declared_cost
        wrong = [k for k in ("gpu_hours", "flops", "seconds") if k in declared
                 and not isinstance(declared[k], (int, float))]
        if wrong:
            raise CheckpointError(f"{self.folder / COST_FILE}: {wrong} must be numbers")
        return {k: float(declared[k]) for k in ("gpu_hours", "flops", "seconds") if declared.get(k) is not None}

    @property
    def cost_source(self) -> str:
        if "seconds" in self.pretraining:
            return f"recorded by pretraining run {self.pretraining.get('run_id', '?')}"
        return f"declared in {COST_FILE}: {self.declared_cost.get('source', 'no source given')}"[:500]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return read_state_dict(self.folder)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the weights file (16 hex digits); of its shards in order where a large model is sharded."""
        single = [self.folder / name for name in WEIGHT_FILES if (self.folder / name).is_file()][:1]
        shards = sorted(self.folder.glob("model-*.safetensors")) or sorted(self.folder.glob("pytorch_model-*.bin"))
        digest = hashlib.sha256()
        for weights in single or shards:
            with weights.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
        return digest.hexdigest()[:16]


@functools.cache
def open_checkpoint(source: str) -> Checkpoint:
    """Read a checkpoint's manifest (not its weights). Errors name the source and what to pass."""
    folder = local_path(source)
    if not folder.exists() and looks_like_hub_id(source):
        folder = download_from_hub(source)  # a hub id such as zhihan1996/DNABERT-2-117M
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {source}: no such folder. Pass a folder written by "
                              "`python -m harness pretrain`, an MLflow URI such as runs:/<run_id>/checkpoint, "
                              "or a DNABERT-2 folder (config.json + weights)")
    if (folder / MANIFEST).is_file():
        meta = read_json(folder / MANIFEST, ("model", "architecture", "tokenizer"))
        check_architecture(folder / MANIFEST, meta["model"], meta["architecture"])
        return Checkpoint(source, folder, meta["model"], meta["architecture"], meta["tokenizer"],
                          meta.get("pretraining", {}), meta.get("tokenizer_fingerprint"))
    if (folder / "config.json").is_file():  # DNABERT-2's published layout
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            raise CheckpointError(f"checkpoint {folder}: config.json but neither {' nor '.join(WEIGHT_FILES)}")
        config = read_json(folder / "config.json", ())
        if not is_dnabert2_config(config):
            raise CheckpointError(f"checkpoint {folder}: a transformers {config['model_type']} checkpoint, not "
                                  "DNABERT-2; fine-tune it with arm hf_pretrained (hf_scratch for its random twin)")
        check_architecture(folder / "config.json", "dnabert2", config)
        return Checkpoint(source, folder, "dnabert2", config, "bpe")
    raise CheckpointError(f"checkpoint {folder}: neither {MANIFEST} (a harness checkpoint) nor config.json "
                          "(a DNABERT-2 checkpoint) is in it")


CHECKPOINT_LAYOUT = (f"a checkpoint folder holds {MANIFEST} (a JSON mapping with model, architecture and tokenizer) "
                     "and model.safetensors (+ tokenizer.json for BPE), as `python -m harness pretrain` writes it, or "
                     "DNABERT-2's published config.json + weights")


def read_json(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """A checkpoint's JSON file as a mapping with the `required` keys, or a CheckpointError naming the file,
    what is wrong with it and what a checkpoint folder holds."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                              f"{err.msg}); {CHECKPOINT_LAYOUT}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON (not UTF-8 text); "
                              f"{CHECKPOINT_LAYOUT}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}; make it readable and run the same "
                              "command again") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"checkpoint file {path} lacks a mapping (it holds a JSON {type(content).__name__}); "
                              f"{CHECKPOINT_LAYOUT}")
    missing = [k for k in required if k not in content]
    if missing:
        raise CheckpointError(f"checkpoint file {path} lacks key(s) {', '.join(map(repr, missing))}: it was not "
                              f"written by `python -m harness pretrain` (or was changed since); {CHECKPOINT_LAYOUT}")
    return content


def check_architecture(path: Path, model: Any, architecture: Any) -> None:
    """The model a checkpoint names is registered, and its architecture names every size the model is built
    from (a missing one would silently take the default, and the weights would not fit), each valid
    (`hyperparameters.RULES`): found when the checkpoint is opened, before any run, naming the file."""
    from .hyperparameters import fixed_problem, value_problem
    from .models import MODELS

    if model not in MODELS:
        raise CheckpointError(f"checkpoint file {path}: model {model!r} is not registered (models: "
                              f"{', '.join(name for name, _ in MODELS.items())}); {CHECKPOINT_LAYOUT}")
    if not isinstance(architecture, dict):
        raise CheckpointError(f"checkpoint file {path}: architecture must be a mapping, got {architecture!r}")
    spec = MODELS.get(model)
    sizes = [k for k in spec.architecture_keys if k not in spec.head_keys]
    missing = [k for k in sizes if k not in architecture]
    if missing:
        raise CheckpointError(f"checkpoint file {path} lacks key(s) {', '.join(map(repr, missing))}: the {model} "
                              f"model is built from {', '.join(sizes)}; {CHECKPOINT_LAYOUT}")
    for key in spec.architecture_keys:
        problem = value_problem(key, architecture[key]) if key in architecture else None
        if problem:
            raise CheckpointError(f"checkpoint file {path}: {problem}")
    problem = fixed_problem(architecture)
    if problem:
        raise CheckpointError(f"checkpoint file {path}: {problem}")


# ------------------------------------------------------------------------------ transformers checkpoints
HF_WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
                      "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")
# What AutoTokenizer may read from a folder: the files `hf_*` arms hash into their tokenizer fingerprint.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                      "sentencepiece.bpe.model")
HF_LAYOUT = ("a transformers checkpoint folder holds config.json, model.safetensors (or pytorch_model.bin) and its "
             "tokenizer files, as `save_pretrained` writes them")


@functools.cache
def open_hf_checkpoint(source: str) -> Checkpoint:
    """A transformers checkpoint (for the hf_* arms): its config, refused before anything runs where it needs
    custom code or names an architecture this transformers does not implement. A hub id is downloaded where
    there is network (config, weights and tokenizer files, never code); offline it fails within seconds."""
    folder = local_path(source)
    if not folder.exists() and looks_like_hub_id(source):
        folder = download_from_hub(source, ("config.json", *HF_WEIGHT_PATTERNS, *HF_TOKENIZER_FILES),
                                   fix="checkpoint=<that local folder>")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {source}: no such folder; {HF_LAYOUT} (pass its local path, or a hub id "
                              "where there is network)")
    if (folder / MANIFEST).is_file():  # its config.json, if any, is the harness's own DNABERT-2 layout
        raise CheckpointError(f"checkpoint {folder}: a harness checkpoint ({MANIFEST}); fine-tune it with the arm of "
                              "its model (init= or its pretrained arm), not an hf arm")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"checkpoint {folder}: no config.json; {HF_LAYOUT}")
    config = read_json(folder / "config.json", ())
    check_native_architecture(folder / "config.json", config)
    if not any(folder.glob(pattern) for pattern in HF_WEIGHT_PATTERNS):
        raise CheckpointError(f"checkpoint {folder}: config.json but no weights; {HF_LAYOUT}")
    return Checkpoint(source, folder, "hf", config, "hf")


def is_dnabert2_config(config: dict[str, Any]) -> bool:
    """DNABERT-2's config.json: the published one names its code (auto_map) and the harness's its ALiBi
    (alibi_starting_size); older or hand-written ones name no model_type. Any other is a native transformers one."""
    return "auto_map" in config or "alibi_starting_size" in config or "model_type" not in config


def check_native_architecture(path: Path, config: dict[str, Any]) -> None:
    """The config needs no code but transformers' own: no `auto_map`, a `model_type` transformers knows, and not
    DNABERT-2's layout (ALiBi attention, which transformers' BERT lacks: its weights would not load)."""
    if is_dnabert2_config(config) and "auto_map" not in config:
        raise CheckpointError(f"checkpoint file {path}: DNABERT-2's layout, which transformers does not implement "
                              "natively; use arm dnabert2_pretrained (dnabert2_scratch for its random twin)")
    if "auto_map" in config:
        raise CheckpointError(
            f"checkpoint file {path}: its config names custom code (auto_map: {sorted(config['auto_map'])}), which "
            "needs trust_remote_code; the harness never runs a checkpoint's own code. For DNABERT-2 use arm "
            "dnabert2_pretrained (the harness's native implementation of it, which reads this folder); for another "
            "model, convert the checkpoint to an architecture transformers implements natively (BERT, RoBERTa, "
            "ESM, ...: a config.json without auto_map) and pass that folder")
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"checkpoint file {path}: model_type {model_type!r} is not an architecture this "
                              "transformers implements natively; convert the checkpoint to one it does "
                              "(BERT, RoBERTa, ESM, ...)")


def save_checkpoint(folder: Path, model_name: str, architecture: dict[str, Any], module: nn.Module,
                    tokenizer, pretraining: dict[str, Any]) -> Path:
    """Write `module` (a masked-LM) and its manifest; DNABERT-2 also in its published layout."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(folder)
    else:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
    if tokenizer.name == "bpe":
        tokenizer.save(folder / "tokenizer.json")
    manifest = {"model": model_name, "architecture": architecture, "tokenizer": tokenizer.name,
                "tokenizer_fingerprint": tokenizer.fingerprint, "pretraining": pretraining}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder
