"""Study specs (``studies/<name>.yaml``): tasks, the equal budget, the sampler/pruner and the search
space of every arm family. A study is named (looked up in the studies folder) or given as a path."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

REPO_STUDIES = Path(__file__).resolve().parent.parent / "studies"


class StudyError(ValueError):
    """An invalid study file; the message names the file and the key."""


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: str
    description: str
    tasks: list[str]
    n_trials: int
    max_epochs: int
    patience: int | None
    seeds: int
    sampler_seed: int
    n_startup_trials: int
    pruner: dict[str, int]
    bpe_vocab_size: int
    search_spaces: dict[str, dict[str, BaseDistribution]]
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def space(self, family: str) -> dict[str, BaseDistribution]:
        if family not in self.search_spaces:
            raise StudyError(f"{self.path}: search_spaces has no {family!r} family (needed by this arm); "
                             f"it declares {sorted(self.search_spaces)}")
        return self.search_spaces[family]

    def suggest(self, trial: optuna.Trial, family: str) -> dict[str, Any]:
        """Sample a configuration for `family` from this study's space, plus its fixed values."""
        params = {name: suggest(trial, name, dist) for name, dist in self.space(family).items()}
        return {**self.fixed.get(family, {}), **params}

    def protocol(self, family: str) -> dict[str, Any]:
        """Everything that must match for two runs of a study to be the same comparison."""
        return {
            "n_trials": self.n_trials, "max_epochs": self.max_epochs, "patience": self.patience,
            "search_space": {k: optuna.distributions.distribution_to_json(v) for k, v in self.space(family).items()},
            "fixed": self.fixed.get(family, {}), "pruner": self.pruner,
        }

    def protocol_hash(self, family: str) -> str:
        return hashlib.sha256(json.dumps(self.protocol(family), sort_keys=True).encode()).hexdigest()[:12]


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)


def study_dirs() -> list[Path]:
    dirs = [Path(os.environ["HARNESS_STUDIES_DIR"])] if "HARNESS_STUDIES_DIR" in os.environ else []
    return dirs + [Path("studies"), REPO_STUDIES]


def list_studies() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in reversed(study_dirs()):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found[path.stem] = path
    return dict(sorted(found.items()))


def load_study(name_or_path: str) -> StudySpec:
    path = Path(name_or_path)
    if not path.suffix:
        known = list_studies()
        if name_or_path not in known:
            raise StudyError(f"unknown study {name_or_path!r}; known: {', '.join(known) or '(none)'} "
                             "(or pass a path to a .yaml file)")
        path = known[name_or_path]
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    raw = yaml.safe_load(path.read_text()) or {}
    return parse_study(raw, str(path))


def parse_study(raw: dict[str, Any], path: str) -> StudySpec:
    def need(section: dict, key: str, kind: type, where: str):
        if key not in section:
            raise StudyError(f"{path}: missing key {where}{key}")
        value = section[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise StudyError(f"{path}: {where}{key} must be {kind.__name__}, got {value!r}")
        return value

    budget = need(raw, "budget", dict, "")
    spaces = need(raw, "search_spaces", dict, "")
    spec = StudySpec(
        name=str(raw.get("name", Path(path).stem)),
        path=path,
        description=str(raw.get("description", "")),
        tasks=[str(t) for t in need(raw, "tasks", list, "")],
        n_trials=need(budget, "n_trials", int, "budget."),
        max_epochs=need(budget, "max_epochs", int, "budget."),
        patience=budget.get("patience"),
        seeds=int(budget.get("seeds", 3)),
        sampler_seed=int((raw.get("sampler") or {}).get("seed", 0)),
        n_startup_trials=int((raw.get("sampler") or {}).get("n_startup_trials", 10)),
        pruner={k: int(v) for k, v in (raw.get("pruner") or {}).items()},
        bpe_vocab_size=int((raw.get("tokenizer") or {}).get("bpe_vocab_size", 4096)),
        search_spaces={fam: {name: parse_distribution(d, f"{path}: search_spaces.{fam}.{name}")
                             for name, d in params.items() if name != "fixed"}
                       for fam, params in spaces.items()},
        fixed={fam: dict(params.get("fixed", {})) for fam, params in spaces.items()},
    )
    if spec.n_trials < 1 or spec.max_epochs < 1 or spec.seeds < 1:
        raise StudyError(f"{path}: budget.n_trials, budget.max_epochs and budget.seeds must be >= 1")
    if not spec.tasks:
        raise StudyError(f"{path}: tasks is empty")
    return spec


def parse_distribution(d: Any, where: str) -> BaseDistribution:
    if not isinstance(d, dict) or "type" not in d:
        raise StudyError(f"{where}: expected a mapping with a 'type' (float, int or categorical), got {d!r}")
    try:
        kind = d["type"]
        if kind == "float":
            return FloatDistribution(float(d["low"]), float(d["high"]), log=bool(d.get("log", False)),
                                     step=d.get("step"))
        if kind == "int":
            return IntDistribution(int(d["low"]), int(d["high"]), log=bool(d.get("log", False)),
                                   step=int(d.get("step", 1)))
        if kind == "categorical":
            return CategoricalDistribution(list(d["choices"]))
    except KeyError as err:
        raise StudyError(f"{where}: missing key {err.args[0]!r}") from None
    except (ValueError, TypeError) as err:
        raise StudyError(f"{where}: {err}") from None
    raise StudyError(f"{where}: unknown type {kind!r}; use float, int or categorical")
