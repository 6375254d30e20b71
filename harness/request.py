"""A run's request, parsed once: from the command line (which MLproject's parameters fill) into a frozen
`RunRequest`, expanded into (arm, task) `Cell`s, each carrying what the tuning of that cell needs.

`run`, `sweep` and `plan` all parse their parameters here: `RunRequest.parse` takes the parameters as the
strings MLproject passes ("" for unset) and checks each (`parameters.py`), naming the parameter in its
error. Nothing is resolved against this machine until it is used: `runtime` (device, precision, compile)
and `tokenizer_path` (an MLflow URI is downloaded) are resolved once, on first use, so that `sweep --action
print` on a login node without a GPU can still write the commands for the GPU nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from . import tracking
from .arms import ARMS, Arm, Budget, RunOptions
from .data import TaskData
from .errors import ParameterError
from .parameters import names, optional_int
from .runtime import Runtime
from .schema import Tag, optuna_study_name, parent_run_name
from .studies import StudySpec, load_study
from .tasks import load_task

DEFAULT_STORAGE = "sqlite:///optuna.db"


def default_arms(spec: StudySpec, checkpoint: str | None = None) -> tuple[str, ...]:
    """The study's `arms:` list, else every registered arm whose family has a search space here (arms
    that need a checkpoint only when one is given)."""
    if spec.arms:
        return tuple(spec.arms)
    return tuple(name for name, arm in ARMS.items() if arm.family in spec.search_spaces
                 and (checkpoint or not arm.requires_checkpoint))


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
    tokenizer: str | None = None  # a tokenizer.json or an MLflow artifact URI, for BPE arms
    max_length: int | None = None  # overrides the study's per-task token caps
    init: str | None = None  # a checkpoint to fine-tune from
    command: str = ""  # the command line, password removed
    explicit: frozenset[str] = frozenset()  # budget parameters given, not taken from the study (printed again)

    @classmethod
    def parse(cls, params: Mapping[str, str], command: str = "") -> RunRequest:
        """From the parameters of `run` (arm=), `sweep` or `plan` (arms=), as MLproject passes them."""
        study = params.get("study") or "smoke"
        spec = load_study(study)
        init, checkpoint = params.get("init") or None, params.get("checkpoint") or None
        if init and checkpoint and init != checkpoint:
            raise ParameterError("pass either init= or checkpoint=, not both")
        if "arm" in params:  # run: exactly the one arm named
            arms = (params["arm"],)
        else:
            arms = names(params.get("arms")) or default_arms(spec, checkpoint)
        for arm in arms:
            ARMS.get(arm, parameter="arm")  # an unknown arm fails here, listing the known ones
        explicit = frozenset(k for k in ("n_trials", "seeds") if params.get(k))
        return cls(
            study=study, spec=spec, arms=arms,
            tasks=names(params.get("tasks")) or tuple(spec.tasks),
            n_trials=optional_int(params.get("n_trials"), "n_trials") or spec.n_trials,
            seeds=optional_int(params.get("seeds"), "seeds") or spec.seeds,
            data=params.get("data") or "", storage=params.get("storage") or DEFAULT_STORAGE,
            experiment=params.get("experiment") or "", device=params.get("device") or "auto",
            precision=params.get("precision") or "auto", compile=params.get("compile") == "true",
            tokenizer=params.get("tokenizer") or None, max_length=optional_int(params.get("max_length"), "max_length"),
            init=init or checkpoint, command=command, explicit=explicit,
        )

    def parameters(self) -> dict[str, str]:
        """The MLproject parameters that make this request again, defaults left out (storage without its
        password): what `sweep --action print` writes for each cell."""
        params = {"arm": ",".join(self.arms), "tasks": ",".join(self.tasks), "study": self.study,
                  "data": self.data, "storage": tracking.redact(self.storage), "experiment": self.experiment,
                  "n_trials": self.n_trials if "n_trials" in self.explicit else "",
                  "seeds": self.seeds if "seeds" in self.explicit else "",
                  "device": self.device if self.device != "auto" else "",
                  "precision": self.precision if self.precision != "auto" else "",
                  "compile": "true" if self.compile else "", "tokenizer": self.tokenizer,
                  "max_length": self.max_length, "checkpoint": self.init}
        return {k: str(v) for k, v in params.items() if v not in ("", None)}

    @functools.cached_property
    def runtime(self) -> Runtime:
        """Resolved once, on first use: cuda asked for and absent fails here."""
        return Runtime.resolve(self.device, self.precision, self.compile)

    @functools.cached_property
    def tokenizer_path(self) -> str | None:
        from .checkpoints import local_path

        return str(local_path(self.tokenizer)) if self.tokenizer else None

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.spec.name

    def options(self, arm: Arm, task: str | None = None) -> RunOptions:
        """What `arm` is given on `task`: max_length= overrides the study's per-task cap (set so as not to
        truncate)."""
        cap = self.max_length or (self.spec.max_length(task, arm.tokenizer) if task else None)
        return RunOptions(self.runtime, self.tokenizer_path, self.spec.bpe_vocab_size, cap, self.init)

    def validate(self) -> list[TaskData]:
        """Fail now, not after an hour: the runtime, every arm against the study, tokenizer and checkpoint,
        then every task's data. Returns the loaded tasks."""
        for name in self.arms:
            arm = ARMS.get(name)
            arm.validate(self.spec, self.options(arm))
        return self.load_tasks()

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
                Tag.DATA: self.data or "synthetic", Tag.COMMAND: self.command}


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
    def optuna_study(self) -> str:
        return optuna_study_name(self.spec.name, self.variant, self.task.name)
