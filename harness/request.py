"""A run's request, parsed once: from the command line (which MLproject's parameters fill) into a frozen
`RunRequest`, expanded into (arm, task) `Cell`s, each carrying what the tuning of that cell needs.

`run`, `sweep` and `plan` all parse their parameters here: `RunRequest.parse` takes the parameters as the
strings MLproject passes ("" for unset) and checks each (`parameters.py`), naming the parameter in its
error. Nothing is resolved against this machine until it is used: `runtime` (device, precision, compile,
deterministic) and `tokenizer_path` (an MLflow URI is downloaded) are resolved once, on first use, so that
`sweep --action print` on a login node without a GPU can still write the commands for the GPU nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from . import tracking
from .arms import ARMS, Arm, Budget, RunOptions
from .arms.base import digest
from .data import TaskData
from .errors import DataError, ParameterError, StudyError
from .parameters import choice, costs, names, optional_int
from .runtime import Runtime
from .probe import views_of
from .schema import NOT_APPLICABLE, Mode, Tag, optuna_study_name, parent_run_name
from .studies import StudySpec, load_study
from .tasks import load_task

DEFAULT_STORAGE = "sqlite:///optuna.db"
SAVE_MODELS = ("none", "best", "all")  # which final models are registered in MLflow's Model Registry


def checkpoint_fits(source: str, arm: Arm) -> bool:
    """Whether the checkpoint at `source` holds `arm`'s model on its kind of tokens (opens its manifest). The hf
    arms take any native transformers checkpoint; the other arms never take one of those."""
    from .checkpoints import open_checkpoint
    from .errors import CheckpointError

    if arm.checkpoint_reader == "hf":
        return hf_checkpoint(source)
    try:
        ckpt = open_checkpoint(source)
    except CheckpointError:
        if hf_checkpoint(source):  # an ESM, a RoBERTa...: the hf arms'
            return False
        raise  # unreadable for every arm: say why
    return (ckpt.model, ckpt.tokenizer) == (arm.model, arm.tokenizer)


def hf_checkpoint(source: str) -> bool:
    """Whether `source` opens as a native transformers checkpoint (the hf arms'; custom code never does)."""
    from .checkpoints import open_hf_checkpoint
    from .errors import CheckpointError

    try:
        open_hf_checkpoint(source)
    except CheckpointError:
        return False
    return True


def default_arms(spec: StudySpec, checkpoint: str | None = None, explicit: bool = False) -> tuple[str, ...]:
    """The study's `arms:` list, else every registered arm whose family has a search space here; an arm that
    needs a checkpoint only when one is given that concerns it (the study's `checkpoint.arms`, or, for a
    checkpoint= given here, one that fits it)."""
    if spec.arms:
        return tuple(spec.arms)

    def concerned(arm: Arm) -> bool:
        if not checkpoint:
            return False
        if spec.checkpoint_arms is not None and not explicit:
            return arm.name in spec.checkpoint_arms
        return checkpoint_fits(checkpoint, arm)

    return tuple(name for name, arm in ARMS.items()
                 if any(space == arm.family or space.startswith(f"{arm.family}_") for space in spec.search_spaces)
                 and (not (arm.requires_checkpoint or arm.shaped_by_checkpoint) or concerned(arm)))


def min_sequence_length(arm: Arm, spec: StudySpec, options: RunOptions) -> tuple[int, str]:
    """(the shortest sequence `arm` can use, why). Every arm runs on a 1-bp sequence (the U-Net pads to its
    pooling multiple, a BPE tokenizer keeps single nucleotides) except a k-mer featurisation: a sequence
    shorter than k has no k-mer (and a train split of them fails with "empty vocabulary"). Its minimum is
    the largest k the study's search space can give, so that no trial fails on it."""
    if "k" not in arm.hyperparameters[0]:
        return 1, ""
    space = arm.space(spec, options)
    k = spec.fixed.get(space, {}).get("k", spec.space(space).get("k"))
    largest = int(getattr(k, "high", None) or max(getattr(k, "choices", None) or [k]))
    return largest, (f"its k goes up to {largest} in search space {space!r} of {spec.path}, and a sequence "
                     "shorter than k has no k-mer")


def check_sequence_lengths(arm: Arm, task: TaskData, minimum: tuple[int, str]) -> None:
    """Before any run: every split's shortest sequence is at least what `arm` needs (`min_sequence_length`)."""
    least, why = minimum
    for name in ("train", "dev", "test"):
        split = task.split(name)
        lengths = np.fromiter(map(len, split.sequences), dtype=np.int64, count=len(split))
        row = int(np.argmin(lengths))
        if lengths[row] < least:
            raise DataError(f"{task.source}/{name}.csv, line {split.line(row)}: a sequence of {lengths[row]} bp "
                            f"({int((lengths < least).sum())} shorter than {least} bp in this file); arm {arm.name} "
                            f"needs at least {least} bp: {why}. Remove the shorter sequences or lower the "
                            "study's k.")


@dataclass(frozen=True)
class RunRequest:
    study: str  # as given: a study name or a path to a .yaml
    spec: StudySpec
    arms: tuple[str, ...]
    tasks: tuple[str, ...]
    n_trials: int
    seeds: int
    data: str = ""  # GUE-layout root; "" is the synthetic suite
    storage: str = DEFAULT_STORAGE
    experiment: str = ""  # "" is the study's name
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    deterministic: bool = False  # deterministic kernels (runtime.py): bit-reproducible GPU runs, at a cost
    tokenizer: str | None = None  # a tokenizer.json or an MLflow artifact URI, for BPE arms
    max_length: int | None = None  # overrides the study's per-task token caps
    init: str | None = None  # a checkpoint whose weights a scratch arm fine-tunes from (its own variant arm@sha)
    checkpoint: str | None = None  # the pretrained arms' weights, and the shape of their scratch twins (arm~sha)
    pretrain_cost: tuple[tuple[str, float], ...] = ()  # declared cost of the checkpoint: gpu_hours, flops, seconds
    save_models: str = "best"  # none | best (the final seed with the best dev MCC) | all: registered in MLflow
    mode: str = Mode.FINETUNE  # finetune | probe: the backbone frozen, a head on its cached embeddings (probe.py)
    command: str = ""  # the command line, password removed
    explicit: frozenset[str] = frozenset()  # parameters given, not taken from the study (printed again)

    @classmethod
    def parse(cls, params: Mapping[str, str], command: str = "") -> RunRequest:
        """From the parameters of `run` (arm=), `sweep` or `plan` (arms=), as MLproject passes them."""
        from .parameters import experiment_name
        from .tasks import check_task_name

        study = params.get("study") or "smoke"
        spec = load_study(study)
        init, checkpoint = params.get("init") or None, params.get("checkpoint") or spec.checkpoint
        unknown = [a for a in spec.checkpoint_arms or () if a not in ARMS]
        if unknown:
            raise StudyError(f"{spec.path}: checkpoint.arms names unknown arm(s) {unknown}; known: "
                             f"{', '.join(name for name, _ in ARMS.items())}")
        if "arm" in params:  # run: exactly the one arm named
            arms = (params["arm"],)
        else:
            arms = names(params.get("arms"), "arms") or default_arms(spec, checkpoint, bool(params.get("checkpoint")))
        for arm in arms:
            ARMS.get(arm, parameter="arm")  # an unknown arm fails here, listing the known ones
        # One spelling per task (a study's tasks are checked when it is loaded): `tf/0/` is not a second cell.
        tasks = tuple(check_task_name(t, ParameterError, "tasks:") for t in names(params.get("tasks"), "tasks"))
        explicit = frozenset(k for k in ("n_trials", "seeds", "tokenizer", "checkpoint") if params.get(k))
        request = cls(
            study=study, spec=spec, arms=arms,
            tasks=tasks or tuple(spec.tasks),
            n_trials=optional_int(params.get("n_trials"), "n_trials") or spec.n_trials,
            seeds=optional_int(params.get("seeds"), "seeds") or spec.seeds,
            data=params.get("data") or "", storage=params.get("storage") or DEFAULT_STORAGE,
            experiment=experiment_name(params.get("experiment") or ""), device=params.get("device") or "auto",
            precision=params.get("precision") or "auto", compile=params.get("compile") == "true",
            deterministic=params.get("deterministic") == "true",
            tokenizer=params.get("tokenizer") or spec.bpe_tokenizer,
            max_length=optional_int(params.get("max_length"), "max_length"),
            init=init, checkpoint=checkpoint, pretrain_cost=tuple(costs(params.get("pretrain_cost"), "pretrain_cost").items()),
            save_models=choice(params.get("save_models") or "best", "save_models", SAVE_MODELS),
            mode=choice(params.get("mode") or Mode.FINETUNE, "mode", Mode.ALL),
            command=command, explicit=explicit,
        )
        if request.mode == Mode.PROBE and "arm" not in params and not params.get("arms") and not spec.arms:
            # probing freezes a checkpoint's network: by default, the arms a checkpoint here concerns
            request = replace(request, arms=tuple(a for a in request.arms if request.initial(ARMS.get(a))[0]))
            if not request.arms:
                raise ParameterError(f"mode=probe freezes a checkpoint's network, and no arm of {spec.path} has one "
                                     "here: pass checkpoint= (a pretrained arm's weights, its scratch twins' shape) or "
                                     "init=, or name the arms with arms=")
        return request

    def parameters(self) -> dict[str, str]:
        """The MLproject parameters that make this request again, defaults and what the study file says left out
        (storage without its password): what `sweep --action print` writes for each cell."""
        params = {"arm": ",".join(self.arms), "tasks": ",".join(self.tasks), "study": self.study,
                  "data": self.data, "storage": tracking.redact(self.storage), "experiment": self.experiment,
                  "n_trials": self.n_trials if "n_trials" in self.explicit else "",
                  "seeds": self.seeds if "seeds" in self.explicit else "",
                  "device": self.device if self.device != "auto" else "",
                  "precision": self.precision if self.precision != "auto" else "",
                  "compile": "true" if self.compile else "",
                  "deterministic": "true" if self.deterministic else "",
                  "tokenizer": self.tokenizer if "tokenizer" in self.explicit else "",
                  "max_length": self.max_length, "init": self.init,
                  "checkpoint": self.checkpoint if "checkpoint" in self.explicit else "",
                  "pretrain_cost": ",".join(f"{k}={v:g}" for k, v in self.pretrain_cost),
                  "save_models": self.save_models if self.save_models != "best" else "",
                  "mode": self.mode if self.mode != Mode.FINETUNE else ""}
        return {k: str(v) for k, v in params.items() if v not in ("", None)}

    def takes_checkpoint(self, arm: Arm) -> bool:
        """Whether `checkpoint` concerns `arm`: an arm that requires one takes its weights; a scratch arm of the
        same model and tokenizer kind takes its shape (a twin). The study's `checkpoint: {arms: [...]}` names
        them; otherwise a run of one named arm given checkpoint= takes it (a mismatch is then an error), and
        any other arm takes it where the checkpoint fits it. An arm given init= fine-tunes from that instead."""
        if not self.checkpoint or not arm.neural or (self.init and "checkpoint" not in self.explicit):
            return False
        if self.spec.checkpoint_arms is not None and "checkpoint" not in self.explicit:
            return arm.name in self.spec.checkpoint_arms
        if len(self.arms) == 1 and "checkpoint" in self.explicit:
            return True
        return checkpoint_fits(self.checkpoint, arm)

    def initial(self, arm: Arm) -> tuple[str | None, bool]:
        """(the checkpoint `arm` starts from, whether as a twin: its architecture and tokenizer only)."""
        takes = self.takes_checkpoint(arm)
        if self.init and takes and self.init != self.checkpoint:
            raise ParameterError(f"arm {arm.name}: init={self.init} and checkpoint={self.checkpoint} name different "
                                 "checkpoints; pass one of them (init= fine-tunes, checkpoint= makes a scratch arm its "
                                 "twin)")
        if self.init:
            return self.init, False
        return (self.checkpoint, not arm.requires_checkpoint) if takes else (None, False)

    @functools.cached_property
    def runtime(self) -> Runtime:
        """Resolved once, on first use: cuda asked for and absent fails here."""
        return Runtime.resolve(self.device, self.precision, self.compile, self.deterministic)

    @functools.cached_property
    def tokenizer_path(self) -> str | None:
        from .checkpoints import tokenizer_file

        return tokenizer_file(self.tokenizer) if self.tokenizer else None

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.spec.name

    def options(self, arm: Arm, task: str | None = None) -> RunOptions:
        """What `arm` is given on `task`: the BPE tokenizer (BPE arms only); max_length= overrides the study's
        per-task cap (set so as not to truncate); init= (weights to fine-tune from) or the checkpoint this arm
        takes, as weights or, for a scratch arm, as shape only."""
        cap = self.max_length or (self.spec.max_length(task, arm.tokenizer) if task else None)
        source, twin = self.initial(arm)
        options = RunOptions(self.runtime, self.tokenizer_for(arm, source), self.spec.bpe_vocab_size, cap, source, twin,
                             dict(self.pretrain_cost), checkpoint_reader=arm.checkpoint_reader, mode=self.mode)
        if not (options.probing and arm.neural and source):  # nothing to probe: Arm.validate says why
            return options
        space = arm.space(self.spec, options)  # every view a trial can ask for is pooled in one pass
        return replace(options, probe_views=views_of(self.spec.space(space), self.spec.fixed.get(space, {})))

    def tokenizer_for(self, arm: Arm, source: str | None) -> str | None:
        """A BPE arm's tokenizer file: tokenizer= where given; a checkpoint's own where it has one (the study's
        tokenizer never overrides it); else the study's."""
        if arm.tokenizer != "bpe" or not self.tokenizer:
            return None
        if source and "tokenizer" not in self.explicit:
            from .checkpoints import open_checkpoint

            if open_checkpoint(source).tokenizer_file is not None:
                return None
        return self.tokenizer_path

    def validate(self) -> list[TaskData]:
        """Fail now, not after an hour: the runtime, every arm against the study, tokenizer and checkpoint,
        then every task's data. Returns the loaded tasks."""
        arms = [ARMS.get(name) for name in self.arms]
        if "tokenizer" in self.explicit and not any(arm.tokenizer == "bpe" for arm in arms):
            raise ParameterError(f"tokenizer={self.tokenizer} applies to BPE arms; {', '.join(self.arms)} use other "
                                 "tokens. Leave tokenizer empty.")
        if "checkpoint" in self.explicit and not any(self.takes_checkpoint(arm) for arm in arms):
            raise ParameterError(f"checkpoint={self.checkpoint} fits none of the arms {', '.join(self.arms)} (its model "
                                 "and tokenizer kind must match the arm's)")
        self.check_torch_only_parameters(arms)
        for arm in arms:
            arm.validate(self.spec, self.options(arm))
        tasks = self.load_tasks()
        for arm in arms:
            for task in tasks:
                check_sequence_lengths(arm, task, min_sequence_length(arm, self.spec, self.options(arm)))
        return tasks

    def check_torch_only_parameters(self, arms: list[Arm]) -> None:
        """max_length=, an explicit precision= and compile=true concern the torch arms only: given to a request of
        none, they would be ignored without a word (precision's default `auto` is not a choice, so never counts)."""
        if any(arm.neural for arm in arms):
            return
        estimators = f"{', '.join(self.arms)} (scikit-learn)"
        if self.max_length is not None:
            raise ParameterError(f"max_length={self.max_length} applies to torch arms (a token cap); {estimators} "
                                 "read whole sequences. Leave max_length empty.")
        if self.precision != "auto":
            raise ParameterError(f"precision={self.precision} applies to torch arms; {estimators} have no precision "
                                 "setting. Leave precision empty.")
        if self.compile:
            raise ParameterError(f"compile=true applies to torch arms; {estimators} have no model to compile. Leave "
                                 "compile empty.")

    def load_tasks(self) -> list[TaskData]:
        """Every task's data, validated, before any run starts."""
        return [load_task(t, self.data or None) for t in self.tasks]

    def cells(self, tasks: list[TaskData]) -> list[Cell]:
        arms = [ARMS.get(name) for name in self.arms]
        return [Cell(self, arm, task, self.options(arm, task.name)) for arm in arms for task in tasks]

    def provenance(self) -> dict[str, str]:
        """Where a run came from, tagged on its parent run."""
        return {Tag.GIT_COMMIT: tracking.git_commit(), Tag.STORAGE: tracking.redact(self.storage),
                Tag.DEVICE: self.runtime.describe(), Tag.DEVICE_REQUESTED: self.device,
                Tag.DATA: self.data or "synthetic", Tag.COMMAND: self.command,
                Tag.DETERMINISTIC: str(self.runtime.deterministic).lower()}


@dataclass(frozen=True)
class Cell:
    """One (arm, task) of a request: what `tuning.tune_cell` runs."""

    request: RunRequest
    arm: Arm
    task: TaskData
    options: RunOptions

    @property
    def spec(self) -> StudySpec:
        return self.request.spec

    @property
    def budget(self) -> Budget:
        return self.arm.budget(self.spec)

    @property
    def variant(self) -> str:
        return self.arm.variant(self.options)

    @property
    def label(self) -> str:
        return parent_run_name(self.variant, self.task.name)

    @property
    def space(self) -> str:
        """The study's search space this cell is tuned in."""
        return self.arm.space(self.spec, self.options)

    def factors(self) -> dict[str, str]:
        """Every factor of this cell that a contrast may vary or must hold equal (schema.FACTORS), as tags:
        the arm variant's (model, architecture, tokenizer, initial weights, token cap, search space), the budget
        offered (the study's epoch cap, also to one-pass estimators), the precision (`n/a` for estimators that
        have none) and the data."""
        request = self.request
        return {**self.arm.factors(self.spec, self.task, self.options),
                Tag.N_TRIALS: str(request.n_trials), Tag.MAX_EPOCHS: str(self.spec.max_epochs),
                Tag.PATIENCE: str(self.spec.patience or "none"), Tag.SEEDS: str(request.seeds),
                Tag.PRECISION: self.options.runtime.precision if self.arm.neural else NOT_APPLICABLE,
                Tag.DATA_SHA: digest({s: self.task.split(s).fingerprint for s in ("train", "dev", "test")})}

    @property
    def optuna_study(self) -> str:
        return optuna_study_name(self.spec.name, self.variant, self.task.name)
