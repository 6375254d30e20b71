"""Study specs (``studies/<name>.yaml``): tasks, the equal budget, the sampler/pruner and the search
space of every arm family. A study is named (looked up in the studies folder) or given as a path."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .errors import StudyError
from .schema import FACTORS
from .tasks import check_task_name

REPO_STUDIES = Path(__file__).resolve().parent.parent / "studies"


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
    pruner: dict[str, int] | None  # MedianPruner's settings; None: no pruning (`pruner: none`)
    bpe_vocab_size: int
    search_spaces: dict[str, dict[str, BaseDistribution]]
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)
    contrasts: list[dict[str, Any]] = field(default_factory=list)  # the analysis's own, besides the defaults
    families: dict[str, str] = field(default_factory=dict)  # task -> family (analysis; default: name's first part)
    arms: list[str] = field(default_factory=list)  # the sweep's arms (empty: every arm with a search space)
    max_lengths: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> tokenizer kind -> tokens
    bpe_tokenizer: str | None = None  # `tokenizer: {bpe: ...}`: the tokenizer of every BPE arm (a path or hub id)
    checkpoint: str | None = None  # `checkpoint:`: the pretrained arms' weights; their scratch twins' shape
    checkpoint_arms: tuple[str, ...] | None = None  # the arms it applies to (None: those it fits)

    def max_length(self, task: str, tokenizer: str | None) -> int | None:
        """The study's token cap for `task` under a tokenizer kind ("bpe", "char"), if it sets one."""
        return self.max_lengths.get(task, {}).get(tokenizer) if tokenizer else None

    def space_name(self, family: str, init: str) -> str:
        """The search space of an arm family under an initialisation (`scratch` or `pretrained`): the
        study's `<family>_<init>` space where it declares one (a from-scratch transformer needs larger
        learning rates than a fine-tuned one), else the family's."""
        specific = f"{family}_{init}"
        return specific if specific in self.search_spaces else family

    def space(self, name: str) -> dict[str, BaseDistribution]:
        if name not in self.search_spaces:
            raise StudyError(f"{self.path}: search_spaces has no {name!r} family (needed by this arm); "
                             f"it declares {sorted(self.search_spaces)}")
        return self.search_spaces[name]

    def suggest(self, trial: optuna.Trial, space: str) -> dict[str, Any]:
        """Sample a configuration from this study's space `space`, plus its fixed values."""
        params = {name: suggest(trial, name, dist) for name, dist in self.space(space).items()}
        return {**self.fixed.get(space, {}), **params}

    def protocol(self, space: str) -> dict[str, Any]:
        """Everything that must match for two runs of a study to be the same comparison."""
        return {
            "n_trials": self.n_trials, "max_epochs": self.max_epochs, "patience": self.patience, "seeds": self.seeds,
            "search_space": {k: optuna.distributions.distribution_to_json(v) for k, v in self.space(space).items()},
            "fixed": self.fixed.get(space, {}), "pruner": self.pruner,
        }


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)


def as_study_entry(dist: BaseDistribution) -> dict[str, Any]:
    """A distribution written back the way a study file declares it: {type: float, low: .., high: .., log: true}."""
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "float" if isinstance(dist, FloatDistribution) else "int"
    entry: dict[str, Any] = {"type": kind, "low": dist.low, "high": dist.high}
    if dist.log:
        entry["log"] = True
    if dist.step is not None and not (kind == "int" and dist.step == 1):
        entry["step"] = dist.step
    return entry


def describe_distribution(dist: BaseDistribution) -> str:
    """One line for an MLflow parameter: `float in [0.0003, 0.003], log`, `one of [32, 64]`."""
    entry = as_study_entry(dist)
    if entry["type"] == "categorical":
        return f"one of {entry['choices']}"
    extras = (", log" if entry.get("log") else "") + (f", step {entry['step']}" if "step" in entry else "")
    return f"{entry['type']} in [{entry['low']:g}, {entry['high']:g}]{extras}"


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
    try:
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as err:
        raise StudyError(f"{path}: byte {err.start} is not UTF-8; save the study file as UTF-8") from None
    except DuplicateKeyError as err:
        raise StudyError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    return parse_study(raw, str(path))


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a study file names one key twice; PyYAML alone would keep the last value silently."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a mapping that repeats a key (`budget: {n_trials: 4, n_trials: 2}`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) or key is None:  # unhashable keys: PyYAML's own error
                if key in first_line:
                    raise DuplicateKeyError(f"key {key!r} appears twice in one mapping (lines {first_line[key]} and "
                                            f"{line}); keep one (YAML would silently use the last)")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its own text quotes the offending line below)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    lines = (mark.buffer or "").splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    hint = " (YAML indents with spaces, never tabs)" if "\t" in line[:mark.column + 1] else ""
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}{hint}"


# ----------------------------------------------------------------------------------- the keys of a study file
# Every section of a study file accepts only its known keys, so that a typo (`patiance: 2`, `tokenzier:`) is an
# error naming the key path and the closest valid key rather than a silently different protocol. A schema is a
# mapping key -> the schema of its value (None: a leaf, or a mapping whose keys are names: tasks, arms, families),
# `Each(schema)`: a list's entries or a mapping's values of one schema (the key is the user's: a family, a
# parameter), or `DISTRIBUTION`: the keys of a distribution depend on its type.


@dataclass(frozen=True)
class Each:
    schema: Any
    besides: tuple[tuple[str, Any], ...] = ()  # a mapping's keys with a schema of their own (a family's `fixed`)


DISTRIBUTION_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
                     "categorical": ("type", "choices")}
DISTRIBUTION = "distribution"
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials")  # optuna's MedianPruner
TASK_KEYS = {"name": None, "classes": None, "bp": None, "max_length": {"bpe": None, "char": None}}
CONTRAST_KEYS = {"a": None, "b": None, "name": None, "varies": None}
CHECKPOINT_KEYS = {"source": None, "arms": None}
STUDY_SCHEMA: dict[str, Any] = {
    "name": None,
    "description": None,
    "tasks": Each(TASK_KEYS),  # or a plain task name
    "budget": {"n_trials": None, "max_epochs": None, "patience": None, "seeds": None},
    "sampler": {"seed": None, "n_startup_trials": None},
    "pruner": dict.fromkeys(PRUNER_KEYS),  # or `none`
    "tokenizer": {"bpe": None, "bpe_vocab_size": None},
    "search_spaces": Each(Each(DISTRIBUTION, besides=(("fixed", None),))),  # family -> parameter -> distribution
    "analysis": {"contrasts": Each(CONTRAST_KEYS), "families": None},
    "arms": None,
    "checkpoint": CHECKPOINT_KEYS,  # or a plain source
}


ANCHOR_PREFIX = "x-"  # top-level keys the harness ignores: YAML anchors shared by several sections


def key_path(where: str, key: Any, index: bool = False) -> str:
    """`budget` + `patience` -> `budget.patience`; `tasks` + list index 0 -> `tasks[0]`."""
    return f"{where}[{key}]" if index else f"{where}.{key}" if where else str(key)


def unknown_key_message(path: str, where: str, key: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    elsewhere = [section for section, keys in STUDY_SCHEMA.items() if isinstance(keys, dict) and key in keys]
    hint = (f"did you mean {close[0]!r}? " if close else
            f"it belongs under {elsewhere[0]} ({elsewhere[0]}.{key}); " if elsewhere and not where else
            "fixed values go inside a family (search_spaces.<family>.fixed); " if key == "fixed" else
            f"(a block that only holds YAML anchors is named {ANCHOR_PREFIX}<name>); " if not where else "")
    return f"{path}: unknown key {key_path(where, key)}; {hint}allowed: {', '.join(allowed)}"


def check_keys(value: Any, schema: Any, path: str, where: str = "") -> None:
    """Raise a StudyError for the first key of `value` that `schema` does not know, naming its full path
    (`budget.patiance`), the closest known key and the allowed ones. Values of the wrong type are left to the
    parser, which says what it expects."""
    if schema is None:
        return
    if schema == DISTRIBUTION:
        kind = value.get("type") if isinstance(value, dict) else None
        schema = dict.fromkeys(DISTRIBUTION_KEYS[kind]) if kind in DISTRIBUTION_KEYS else None
        if schema is None:
            return  # no or an unknown type: parse_distribution says so
    if isinstance(schema, Each):
        entries = enumerate(value) if isinstance(value, list) else value.items() if isinstance(value, dict) else []
        besides = dict(schema.besides)
        for key, entry in entries:
            check_keys(entry, besides.get(key, schema.schema), path,
                       key_path(where, key, index=isinstance(value, list)))
        return
    if not isinstance(value, dict):
        return
    for key, entry in value.items():
        if not where and str(key).startswith(ANCHOR_PREFIX):
            continue  # a top-level block that only holds YAML anchors (`x-common: &c {...}`, merged with `<<: *c`)
        if key not in schema:
            raise StudyError(unknown_key_message(path, where, key, list(schema)))
        check_keys(entry, schema[key], path, key_path(where, key))


def check_arm_names(names: Any, path: str, where: str) -> None:
    """`arms:` names registered arms; a misspelt one gets the closest name. (`checkpoint.arms` is checked by
    RunRequest.parse.)"""
    if not names:
        return
    from .arms import ARMS  # harness.arms imports this module: imported here, when a study names arms

    known = list(ARMS)
    for i, name in enumerate(names if isinstance(names, list) else []):
        if name not in ARMS:
            close = difflib.get_close_matches(str(name), known, n=1)
            raise StudyError(f"{path}: {where}[{i}] {name!r} is not an arm; "
                             + (f"did you mean {close[0]!r}? " if close else "") + f"registered: {', '.join(known)}")


def parse_study(raw: Any, path: str) -> StudySpec:
    """Validate a study mapping; every problem is a StudyError naming the file and the key."""

    def get(section: Any, key: str, kind: type, where: str, default: Any = ..., minimum: int | None = None):
        if not isinstance(section, dict):
            raise StudyError(f"{path}: {where.rstrip('.') or 'the file'} must be a mapping, got {section!r}")
        if key not in section or section[key] is None:
            if default is ...:
                raise StudyError(f"{path}: missing key {where}{key}")
            return default
        value = section[key]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise StudyError(f"{path}: {where}{key} must be {kind.__name__}, got {value!r}")
        if minimum is not None and value < minimum:
            raise StudyError(f"{path}: {where}{key} must be >= {minimum}, got {value}")
        return value

    check_keys(raw, STUDY_SCHEMA, path)
    budget = get(raw, "budget", dict, "")
    spaces = get(raw, "search_spaces", dict, "")
    sampler = get(raw, "sampler", dict, "", {})
    no_pruning = isinstance(raw, dict) and str(raw.get("pruner")).lower() in ("none", "false")
    pruner = {} if no_pruning else get(raw, "pruner", dict, "", {})
    for fam, params in spaces.items():
        if not isinstance(params, dict) or not params:
            raise StudyError(f"{path}: search_spaces.{fam} must be a mapping of parameter: distribution, got {params!r}")
    analysis = get(raw, "analysis", dict, "", {})
    contrasts = get(analysis, "contrasts", list, "analysis.", [])
    families = get(analysis, "families", dict, "analysis.", {})
    bad = {k: v for k, v in families.items() if not isinstance(k, str) or not isinstance(v, str) or not v}
    if bad:
        raise StudyError(f"{path}: analysis.families must map task names to family names (strings), got {bad!r}")
    for i, c in enumerate(contrasts):
        if not isinstance(c, dict) or not {"a", "b"} <= set(c):
            raise StudyError(f"{path}: analysis.contrasts[{i}] must be a mapping with keys a, b (arm names), "
                             f"an optional name and an optional varies (factors), got {c!r}")
        unknown = set(c.get("varies", [])) - set(FACTORS) if isinstance(c.get("varies", []), list) else {c["varies"]}
        if unknown:
            raise StudyError(f"{path}: analysis.contrasts[{i}].varies must be a list of factors among "
                             f"{', '.join(FACTORS)}; got {sorted(map(str, unknown))}")
    tasks = get(raw, "tasks", list, "")
    if not tasks:
        raise StudyError(f"{path}: tasks is empty")
    max_lengths = {}
    for i, t in enumerate(tasks):  # a task is a name, or {name: ..., max_length: {bpe: N, char: M}}
        if not isinstance(t, (str, dict)):
            raise StudyError(f"{path}: tasks[{i}] must be a task name or a mapping with name and max_length, "
                             f"got {t!r}")
        if isinstance(t, dict):
            lengths = t.get("max_length", {})
            if "name" not in t or not isinstance(lengths, dict) \
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in lengths.values()):
                raise StudyError(f"{path}: tasks[{i}] must be a task name or a mapping with name and max_length "
                                 f"{{bpe: N, char: M}} (positive token counts), got {t!r}")
            max_lengths[str(t["name"])] = {str(k): int(v) for k, v in lengths.items()}
    tasks = [str(t["name"]) if isinstance(t, dict) else t for t in tasks]
    for i, t in enumerate(tasks):
        check_task_name(str(t), StudyError, f"{path}: tasks[{i}]")
    tokenizer = get(raw, "tokenizer", dict, "", {})
    bpe = get(tokenizer, "bpe", str, "tokenizer.", None)
    checkpoint, checkpoint_arms = parse_checkpoint(raw.get("checkpoint"), path)
    arms = get(raw, "arms", list, "", [])
    check_arm_names(arms, path, "arms")
    for fam, params in spaces.items():  # `suggest` would let the searched value win without a word
        fixed = params.get("fixed") if isinstance(params.get("fixed"), dict) else {}
        both = sorted(set(fixed) & (set(params) - {"fixed"}))
        if both:
            raise StudyError(f"{path}: search_spaces.{fam}: {', '.join(both)} both searched and fixed; keep one "
                             "(the fixed value would be ignored)")
    return StudySpec(
        name=study_name(raw.get("name", Path(path).stem), path),
        path=path,
        description=str(raw.get("description", "")),
        tasks=[str(t) for t in tasks],
        n_trials=get(budget, "n_trials", int, "budget.", minimum=1),
        max_epochs=get(budget, "max_epochs", int, "budget.", minimum=1),
        patience=get(budget, "patience", int, "budget.", None, minimum=1),
        seeds=get(budget, "seeds", int, "budget.", 3, minimum=1),
        sampler_seed=sampler_seed(get(sampler, "seed", int, "sampler.", 0), path),
        n_startup_trials=get(sampler, "n_startup_trials", int, "sampler.", 10, minimum=0),
        pruner=None if no_pruning else {k: get(pruner, k, int, "pruner.", minimum=0) for k in pruner},
        bpe_vocab_size=get(tokenizer, "bpe_vocab_size", int, "tokenizer.", 4096, minimum=16),
        search_spaces={fam: {name: parse_distribution(d, f"{path}: search_spaces.{fam}.{name}")
                             for name, d in params.items() if name != "fixed"}
                       for fam, params in spaces.items()},
        fixed={fam: dict(get(params, "fixed", dict, f"search_spaces.{fam}.", {})) for fam, params in spaces.items()},
        contrasts=[{k: [str(f) for f in v] if k == "varies" else str(v) for k, v in c.items()} for c in contrasts],
        families=dict(families),
        arms=[str(a) for a in arms],
        max_lengths=max_lengths,
        bpe_tokenizer=beside(bpe, path) if bpe else None,
        checkpoint=beside(checkpoint, path) if checkpoint else None,
        checkpoint_arms=checkpoint_arms,
    )


MAX_NAME_LENGTH = 200  # MLflow's experiment-name limit is 500; Optuna's study names add "/<arm>/<task>"
# The harness adds the trial count and 7919 per resumed run to the seed (workers.sampler_seed); Optuna refuses a
# seed outside 0..2**32-1, so the study's own seed stays below 2**31, leaving the other half for those offsets.
MAX_SAMPLER_SEED = 2**31 - 1


def study_name(value: Any, path: str) -> str:
    """`name:` is the default MLflow experiment and the first part of every Optuna study name
    (`<study>/<arm>/<task>`, schema.optuna_study_name): a non-empty string of at most MAX_NAME_LENGTH
    characters, without `/` or `\\` (which would make those names ambiguous) or control characters."""
    if not isinstance(value, str) or not value.strip():
        raise StudyError(f"{path}: name must be a non-empty string, got {value!r}; give the study a name "
                         "(or remove the key: the file's name is used)")
    if len(value) > MAX_NAME_LENGTH:
        raise StudyError(f"{path}: name is {len(value)} characters long; use at most {MAX_NAME_LENGTH}")
    bad = sorted({c for c in value if c in "/\\" or not c.isprintable()})
    if bad:
        raise StudyError(f"{path}: name {value!r} contains {', '.join(map(repr, bad))}; a study name may not "
                         "contain '/', '\\' or control characters (Optuna studies are named <study>/<arm>/<task>)")
    return value


def sampler_seed(seed: int, path: str) -> int:
    if not 0 <= seed <= MAX_SAMPLER_SEED:
        raise StudyError(f"{path}: sampler.seed must be in 0..2**31-1 ({MAX_SAMPLER_SEED}), got {seed}; the harness "
                         "adds offsets per trial and per resumed run, and Optuna accepts seeds below 2**32 only")
    return seed


def parse_checkpoint(raw: Any, path: str) -> tuple[str | None, tuple[str, ...] | None]:
    """`checkpoint: SOURCE` or `checkpoint: {source: SOURCE, arms: [ARM, ...]}`."""
    if raw is None or isinstance(raw, str):
        return raw or None, None
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str) or not isinstance(raw.get("arms", []), list):
        raise StudyError(f"{path}: checkpoint must be a source (folder, MLflow URI or hub id) or a mapping "
                         f"{{source: ..., arms: [arm, ...]}}, got {raw!r}")
    return raw["source"], tuple(str(a) for a in raw["arms"]) if "arms" in raw else None


def beside(source: str, study_path: str) -> str:
    """A relative path in a study file is read beside the study file when it exists there; otherwise it is
    taken as given (a path from the working folder, an MLflow URI or a hub id)."""
    candidate = Path(study_path).parent / source
    return str(candidate) if not Path(source).is_absolute() and candidate.exists() else source


def parse_distribution(d: Any, where: str) -> BaseDistribution:
    """A distribution mapping -> optuna's, refusing what no hyperparameter could mean whatever the arm: bounds
    that are not numbers (or not integers for an int), low > high, a log scale from 0 or below, a log that is not
    true/false, choices of mixed types. Each value's range for its hyperparameter is the arm's check
    (harness/hyperparameters.py)."""
    if not isinstance(d, dict) or "type" not in d:
        raise StudyError(f"{where}: expected a mapping with a 'type' (float, int or categorical), got {d!r}")
    kind = d["type"]
    missing = [k for k in ("choices",) if kind == "categorical" and k not in d] + \
              [k for k in ("low", "high") if kind in ("float", "int") and k not in d]
    if missing:
        raise StudyError(f"{where}: missing key {missing[0]!r}")
    try:
        if kind == "float":
            low, high = number(d["low"], float, f"{where}.low"), number(d["high"], float, f"{where}.high")
            step = None if d.get("step") is None else number(d["step"], float, f"{where}.step")
            log = numeric_range(low, high, d.get("log", False), step, where)
            return FloatDistribution(low, high, log=log, step=step)
        if kind == "int":
            low, high = number(d["low"], int, f"{where}.low"), number(d["high"], int, f"{where}.high")
            step = number(d.get("step", 1), int, f"{where}.step")
            log = numeric_range(low, high, d.get("log", False), step, where)
            return IntDistribution(low, high, log=log, step=step)
        if kind == "categorical":
            return CategoricalDistribution(choices(d["choices"], where))
    except ValueError as err:  # what optuna refuses besides (step with log: true)
        raise StudyError(f"{where}: {err}") from None
    raise StudyError(f"{where}: unknown type {kind!r}; use float, int or categorical")


def number(value: Any, kind: type, where: str) -> int | float:
    """A bound or step of `kind`. A float bound may be a string: YAML reads `1e-5` (no dot) as one."""
    parsed: int | float | None = None
    if kind is float and isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            pass
    elif not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int):
        parsed = kind(value)
    if parsed is not None and math.isfinite(parsed):
        return parsed
    raise StudyError(f"{where} must be {'a number' if kind is float else 'an integer'}, got {value!r}")


def numeric_range(low: float, high: float, log: Any, step: float | None, where: str) -> bool:
    """Check a float or int range; returns its `log`."""
    if not isinstance(log, bool):
        raise StudyError(f"{where}.log must be true or false, got {log!r}")
    if low > high:
        raise StudyError(f"{where}: low ({low:g}) > high ({high:g}); the range is empty")
    if log and low <= 0:
        raise StudyError(f"{where}: log: true needs low > 0 (a log scale has no 0 or negatives), got low={low:g}")
    if step is not None and step <= 0:
        raise StudyError(f"{where}.step must be > 0, got {step:g}")
    if step is not None and not step_divides(low, high, step):
        below = low + math.floor((high - low) / step) * step
        raise StudyError(f"{where}.step ({step:g}) does not divide high - low ({high:g} - {low:g}): high would never "
                         f"be drawn; make high {below:g} or {below + step:g}, or change the step")
    return log


def step_divides(low: float, high: float, step: float) -> bool:
    """Whether low + k * step reaches high; Optuna only warns otherwise and silently lowers high. Floats are
    compared with a tolerance (0.1 steps of 0.01 give 9.999999999999998)."""
    if all(isinstance(v, int) for v in (low, high, step)):
        return (high - low) % step == 0
    steps = (high - low) / step
    return math.isclose(steps, round(steps), rel_tol=1e-9, abs_tol=1e-9)


def choices(values: Any, where: str) -> list[Any]:
    """Categorical choices: a non-empty list of scalars of one kind (numbers, strings or booleans), so that
    `[32, "64"]` fails here rather than in the trial that draws "64"."""
    if not isinstance(values, list) or not values:
        raise StudyError(f"{where}.choices must be a non-empty list, got {values!r}")
    kinds = {"boolean" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
             "string" if isinstance(v, str) else "null" if v is None else type(v).__name__ for v in values}
    if not kinds <= {"boolean", "number", "string"}:
        raise StudyError(f"{where}.choices must be numbers, strings or booleans, got {values!r}")
    if len(kinds) > 1:
        mixed = " and ".join(f"{kind}s" for kind in sorted(kinds))
        raise StudyError(f"{where}.choices mix {mixed}: {values!r}; give them one type (a quoted number is a string)")
    return values
