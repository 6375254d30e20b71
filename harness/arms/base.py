"""The arm interface: what every arm declares and answers, and what it is given.

An arm is one model x tokenizer x initialisation. It declares its name, the study family whose search space
it takes, its model and tokenizer, and whether it is a neural network (trained epoch by epoch by
`train.fit`, able to start from a checkpoint) or a one-pass estimator. Before anything runs, `validate`
checks that the study, the tokenizer file and the checkpoint fit it; then every arm answers the same call,
`fit(task, params, seed, budget, options, on_epoch)`, with a `Fitted` whose `predict(split)` scores dev or
test.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from optuna.distributions import distribution_to_json

from ..checkpoints import Checkpoint, open_checkpoint, open_hf_checkpoint
from ..data import TaskData
from ..errors import ParameterError, StudyError
from ..hyperparameters import PROBE_RULES, distribution_problem, fixed_problem, produced_values, value_problem
from ..models import MODELS
from ..runtime import Runtime
from ..schema import Init, Mode, Tag, variant_name
from ..studies import StudySpec
from ..tokenizers import BPETokenizer
from ..tracking import redact
from ..train import EpochCallback, FitResult


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-able description."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Budget:
    """What every arm gets alike (from the study): the epoch cap and the early-stopping patience."""

    max_epochs: int
    patience: int | None = None


@dataclass(frozen=True)
class RunOptions:
    """What an arm is given besides its hyperparameters: the runtime, tokenizer, token cap and initial weights."""

    runtime: Runtime = field(default_factory=Runtime.resolve)
    tokenizer_path: str | None = None  # a tokenizer.json for BPE arms
    bpe_vocab_size: int = 4096  # when a BPE arm trains its own tokenizer
    max_length: int | None = None  # tokens, truncating longer sequences (reported)
    init: str | None = None  # a checkpoint (folder, MLflow URI or DNABERT-2 hub id): its architecture, tokenizer...
    twin: bool = False  # ...and, unless twin, its weights. A twin is the checkpoint's network from random weights
    pretrain_cost: dict[str, float] = field(default_factory=dict)  # declared: gpu_hours, flops (pretrain_cost=)
    # Micro-batches per optimiser step (torch arms; the k-mer arm ignores it). Not a hyperparameter: the tuner
    # raises it when a fit runs out of memory, keeping the batch size.
    grad_accumulation: int = 1
    # How `init` is read: "harness" (a harness or DNABERT-2 folder, checkpoints.open_checkpoint) or "hf" (any
    # native transformers folder, checkpoints.open_hf_checkpoint): the arm's `checkpoint_reader`.
    checkpoint_reader: str = "harness"
    # finetune, or probe: the backbone frozen, a head trained on its cached embeddings (harness/probe.py), which
    # pool every (layer, pooling) of `probe_views` (what the study's probe space can ask for) in one pass.
    mode: str = Mode.FINETUNE
    probe_views: tuple[tuple[int, str], ...] = ()

    @property
    def probing(self) -> bool:
        return self.mode == Mode.PROBE

    @property
    def checkpoint(self) -> Checkpoint | None:
        if not self.init:
            return None
        return open_hf_checkpoint(self.init) if self.checkpoint_reader == "hf" else open_checkpoint(self.init)

    @property
    def pretrained(self) -> bool:
        """Starts from a checkpoint's weights."""
        return bool(self.init) and not self.twin

    @property
    def init_factor(self) -> str:
        """`scratch`, or the sha256 of the weights fine-tuned from: the factor the pretraining contrast varies."""
        return self.checkpoint.fingerprint if self.pretrained else Init.SCRATCH


# What `Fitted.export` writes into its folder, and what `harness.serving` reads back: the learnt arrays (never a
# pickle) and a JSON file saying how to rebuild the predictor around them. A BPE arm adds its tokenizer.json.
EXPORT_WEIGHTS = "weights.safetensors"
EXPORT_CONFIG = "config.json"


class Fitted(Protocol):
    result: FitResult
    n_params: int

    def predict(self, split: str) -> np.ndarray: ...

    def artifacts(self, folder: Path) -> list[Path]: ...

    def truncated(self) -> dict[str, int]: ...

    def export(self, folder: Path) -> None:
        """Write what predicting needs into `folder` (EXPORT_WEIGHTS, EXPORT_CONFIG, a tokenizer), so that
        `harness.serving.load_exported(folder)` scores raw sequences as `predict` scores a split."""
        ...


@dataclass(frozen=True)
class Arm:
    name: str
    family: str  # the study's search space for it: cnn, transformer, kmer, ...
    model: str  # a harness.models name, or the estimator of a non-neural arm
    tokenizer: str  # char | bpe | kmer
    description: str
    neural: bool = True  # trained by train.fit epoch by epoch; can be pretrained and start from a checkpoint
    requires_checkpoint: bool = False  # checkpoint= is the point of the arm (dnabert2_pretrained)
    stand_in: str = ""  # an arm of the same architecture that needs no checkpoint: what `plan` times instead
    # A scratch arm that has no architecture of its own (hf_scratch): checkpoint= gives its network and tokenizer,
    # never its weights, so it runs only where a checkpoint concerns it.
    shaped_by_checkpoint: bool = False
    checkpoint_reader: str = "harness"  # how its checkpoint folder is read (RunOptions.checkpoint_reader)
    # An arm that requires a checkpoint is plainly named (dnabert2_pretrained: the published one), unless it takes
    # any checkpoint at all (hf_pretrained@<sha>: each its own variant). A class attribute, not a field.
    variant_names_checkpoint = False

    @property
    def hyperparameters(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) hyperparameter names of the arm's search space."""
        raise NotImplementedError

    def hyperparameters_for(self, options: RunOptions) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) names of the space this arm is tuned in: its own, or a probe's (mode=probe)."""
        return PROBE_HYPERPARAMETERS if options.probing else self.hyperparameters

    def architecture_keys_for(self, options: RunOptions) -> tuple[str, ...]:
        return PROBE_ARCHITECTURE_KEYS if options.probing else self.architecture_keys

    def budget(self, spec: StudySpec) -> Budget:
        """The study's epoch cap and patience; a one-pass estimator has one "epoch"."""
        return Budget(spec.max_epochs if self.neural else 1, spec.patience)

    def tags(self, options: RunOptions) -> dict[str, str]:
        """What the arm variant is, tagged on its runs (its factors come from `factors`)."""
        return {Tag.FAMILY: self.family, Tag.MODEL: self.model, Tag.TOKENIZER: self.tokenizer}

    def space(self, spec: StudySpec, options: RunOptions) -> str:
        """The study's search space for this arm: its family's, or the family's space for its initialisation
        (`transformer_scratch`) where the study declares one. Probed (mode=probe), the study's `probe` space, or
        `probe_<family>` where declared (a CNN has one layer to read): the same for pretrained weights and a twin's
        random ones, so that the pretraining contrast of probes varies the weights alone."""
        if options.probing:
            space = spec.space_name(Mode.PROBE, self.family)
            if space not in spec.search_spaces:
                raise StudyError(f"{spec.path}: mode=probe tunes a head in the study's search space `probe` (or "
                                 f"`probe_{self.family}`), which it does not declare; add one (see studies/smoke.yaml)")
            return space
        return spec.space_name(self.family, "pretrained" if options.pretrained else Init.SCRATCH)

    def architecture(self, spec: StudySpec, space: str, task: TaskData, options: RunOptions) -> dict[str, Any]:
        """The network as far as it is fixed before tuning (what the analysis compares by hash)."""
        return {"estimator": self.model, "fixed": spec.fixed.get(space, {})}

    def tokenizer_sha(self, task: TaskData, options: RunOptions) -> str:
        return self.tokenizer  # a one-pass estimator's featurisation is named by its kind (k-mer, one-hot)

    def factors(self, spec: StudySpec, task: TaskData, options: RunOptions) -> dict[str, str]:
        """The factors of this variant on `task` that a contrast may vary or must hold equal (schema.FACTORS):
        model, architecture (with the names and ranges of tuned architecture keys), tokenizer, initial weights,
        token cap."""
        space, keys = self.space(spec, options), self.architecture_keys_for(options)
        tuned = {k: distribution_to_json(d) for k, d in spec.space(space).items() if k in keys}
        described = {"model": self.model, "architecture": self.architecture(spec, space, task, options),
                     "tuned": tuned}
        return {Tag.MODEL: self.model, Tag.ARCHITECTURE_SHA: digest(described),
                Tag.TOKENIZER_SHA: self.tokenizer_sha(task, options), Tag.INIT: options.init_factor,
                Tag.MAX_LENGTH: str(options.max_length or "none"), Tag.SEARCH_SPACE: space, Tag.MODE: options.mode}

    @property
    def architecture_keys(self) -> tuple[str, ...]:
        """Hyperparameters that shape the network rather than its training."""
        return ()

    def inherited_cost(self, options: RunOptions) -> dict[str, float]:
        """The pretraining compute a fine-tuned arm inherits, where its checkpoint recorded it."""
        return {}

    def embedding_cost(self, task: TaskData, options: RunOptions) -> dict[str, float]:
        """A probed cell's embedding passes over its splits (harness/probe.py); nothing for other arms."""
        return {}

    def variant(self, options: RunOptions) -> str:
        """The label results are filed under: an arm fine-tuned from `init=` is its own variant
        (`convnova_char@1a2b3c4d`, the checkpoint's weight fingerprint), and so is a scratch twin of a checkpoint
        (`dnabert2_scratch~1a2b3c4d`), so that each has its own Optuna study and sits beside the plain arm in
        one experiment. An arm that requires a checkpoint is pretrained by definition."""
        if not options.init or (self.requires_checkpoint and not self.variant_names_checkpoint):
            return variant_name(self.name, mode=options.mode)
        sha = options.checkpoint.fingerprint
        return variant_name(self.name, None if options.twin else sha, sha if options.twin else None, options.mode)

    def validate(self, spec: StudySpec, options: RunOptions) -> None:
        """Before anything runs: the study's search space, a tokenizer= file and a checkpoint fit the arm."""
        self.check_search_space(spec, options)
        if options.tokenizer_path:
            if self.tokenizer != "bpe":
                raise ParameterError(f"tokenizer={options.tokenizer_path} applies to BPE arms; {self.name} uses "
                                     f"{self.tokenizer} tokens. Leave tokenizer empty.")
            BPETokenizer.from_file(options.tokenizer_path)  # a missing or broken file fails here, not in trial 0
        if self.requires_checkpoint and not options.init:
            raise ParameterError(
                f"arm {self.name} fine-tunes a pretrained model: pass checkpoint=<a DNABERT-2 folder (config.json + "
                "weights, e.g. from `hf download zhihan1996/DNABERT-2-117M`), a hub id, or runs:/<run_id>/checkpoint "
                "from the pretrain entry point>")
        if options.init and not self.neural:
            raise ParameterError(f"init={options.init}: arm {self.name} is not a neural network; init and "
                                 "checkpoint apply to torch arms")
        if options.probing and not (self.neural and options.init):
            why = ("is not a neural network" if not self.neural else
                   "has no checkpoint here: probing freezes a checkpoint's network (its pretrained weights, or for a "
                   "scratch twin its shape with random weights)")
            raise ParameterError(f"mode=probe: arm {self.name} {why}. Probe a pretrained arm (dnabert2_pretrained, "
                                 "hf_pretrained, an arm given init=) or its scratch twin with checkpoint=; or leave "
                                 "mode=finetune")
        if options.probing:
            self.check_probe_layers(spec, options)

    def check_probe_layers(self, spec: StudySpec, options: RunOptions) -> None:
        """Every layer the probe space can ask for exists in this arm's network (-1 .. -hidden states)."""
        space, count = self.space(spec, options), self.hidden_state_count(options)
        for label, layer in layer_values(spec, space):
            if isinstance(layer, int) and not -count <= layer <= -1:
                raise StudyError(f"{spec.path}: search_spaces.{space}.layer: {label}: arm {self.name}'s network "
                                 f"({redact(options.init or '')}) has {count} hidden state(s) a probe can read (the "
                                 f"embeddings and each layer's output{'' if count > 1 else ': a CNN, its last layer only'})"
                                 f"; layer must be in -{count}..-1 (-1 the last layer)")

    def hidden_state_count(self, options: RunOptions) -> int:
        """How many hidden states a probe of this arm can read (torch arms: models' `hidden_states`)."""
        raise NotImplementedError
    def check_search_space(self, spec: StudySpec, options: RunOptions) -> None:
        space = self.space(spec, options)
        names = set(spec.space(space)) | set(spec.fixed.get(space, {}))
        required, optional = self.hyperparameters_for(options)
        # A family's fixed architecture of one model (ConvNova's hidden_dim) does not concern another (U-Net).
        other_architectures = {k for _, m in MODELS.items() for k in m.architecture_keys} & set(spec.fixed.get(space, {}))
        missing, unknown = set(required) - names, names - set(required) - set(optional) - other_architectures
        if missing or unknown:
            raise StudyError(
                f"{spec.path}: search space {space!r} does not fit arm {self.name}: "
                + (f"missing {sorted(missing)}; " if missing else "") + (f"unused {sorted(unknown)}; " if unknown else "")
                + "".join(f"did you mean {close[0]!r} for {name!r}? " for name in sorted(unknown)
                          if (close := difflib.get_close_matches(name, [*required, *optional], n=1)))
                + f"it takes {list(required)} and optionally {list(optional)}"
            )
        self.check_values(spec, space, options)

    def check_values(self, spec: StudySpec, space: str, options: RunOptions | None = None) -> None:
        """Every value the space's distributions can produce, and every fixed value, in its hyperparameter's
        range (harness/hyperparameters.py), so that nonsense fails before trial 0 rather than mid-study."""
        probing = options is not None and options.probing
        for name, dist in spec.space(space).items():
            problem = distribution_problem(name, dist, PROBE_RULES) if probing else self.distribution_problem(name, dist)
            if problem:
                raise StudyError(f"{spec.path}: search_spaces.{space}.{name}: {problem}")
        fixed = spec.fixed.get(space, {})
        for name, value in fixed.items():
            problem = value_problem(name, value, rules=PROBE_RULES) if probing else self.value_problem(name, value)
            if problem:
                raise StudyError(f"{spec.path}: search_spaces.{space}.fixed.{name}: {problem}")
        problem = fixed_problem(fixed)
        if problem:
            raise StudyError(f"{spec.path}: search_spaces.{space}.fixed: {problem}")

    def distribution_problem(self, name: str, dist: Any) -> str | None:
        """Why the study's distribution for `name` cannot serve this arm (hyperparameters.RULES), or None."""
        return distribution_problem(name, dist)

    def value_problem(self, name: str, value: Any) -> str | None:
        """Why a fixed value of `name` cannot serve this arm (hyperparameters.RULES), or None."""
        return value_problem(name, value)

    def fit(self, task: TaskData, params: dict[str, Any], seed: int, budget: Budget, options: RunOptions,
            on_epoch: EpochCallback | None = None) -> Fitted:
        raise NotImplementedError


# A probe's search space (mode=probe, models/probe.py): the head's training, the head, and the view it reads.
PROBE_ARCHITECTURE_KEYS = ("head", "head_hidden", "layer", "pooling")
PROBE_HYPERPARAMETERS = (("lr", "batch_size"), ("weight_decay", "warmup_ratio", "dropout", *PROBE_ARCHITECTURE_KEYS))


def layer_values(spec: StudySpec, space: str) -> list[tuple[str, Any]]:
    """(label, value) of each layer a probe space can ask for (the bounds of an int range)."""
    if "layer" in spec.fixed.get(space, {}):
        return [("fixed", spec.fixed[space]["layer"])]
    dist = spec.space(space).get("layer")
    return produced_values(dist) if dist is not None else []
