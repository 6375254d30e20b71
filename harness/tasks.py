"""Task registry: the synthetic suite (embedded default) and the GUE catalogue (needs a data root).

A task name is ``family/task``. Synthetic tasks are generated on the fly; GUE tasks, and any other
folder in the GUE layout, are read from ``<data>/<family>/<task>/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import DataError, TaskData, load_gue_task
from .errors import InputError
from .registry import Registry
from .synthetic import SPECS, make_synthetic_task


@dataclass(frozen=True)
class TaskInfo:
    name: str
    num_classes: int
    description: str


TASKS: Registry[TaskInfo] = Registry("task")

for _spec in SPECS.values():
    TASKS.add(_spec.name, TaskInfo(_spec.name, _spec.num_classes,
                                   f"synthetic, {_spec.length[0]}-{_spec.length[1]} bp"))

# The 28 tasks of GUE (Zhou et al. 2024, DNABERT-2), with their class counts.
GUE_TASKS = {
    **{f"EMP/{m}": 2 for m in ("H3", "H3K14ac", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3",
                                "H3K79me3", "H3K9ac", "H4", "H4ac")},
    **{f"prom/prom_{k}_{v}": 2 for k in ("300", "core") for v in ("all", "notata", "tata")},
    "splice/reconstructed": 3,
    "virus/covid": 9,
    **{f"mouse/{i}": 2 for i in range(5)},
    **{f"tf/{i}": 2 for i in range(5)},
}
for _name, _classes in GUE_TASKS.items():
    TASKS.add(_name, TaskInfo(_name, _classes, "GUE benchmark (pass data=<GUE root>)"))


def task_name_problem(name: str) -> str | None:
    """Why `name` cannot be a task name, or None. A task name is a relative path under data= with plain parts
    (`family/task`): one spelling per task, so that `tf/0/` or `tf/../tf/0` is not a new cell (a new Optuna
    study and task tag) for the same data, and no name reads outside data=."""
    if not name:
        return "is empty"
    if "\\" in name:
        return "contains a backslash; separate its parts with '/' (e.g. tf/0)"
    if name.startswith("/"):
        return "is an absolute path; name the task relative to data= (e.g. tf/0 for <data>/tf/0/)"
    parts = name.split("/")
    if "" in parts:
        return "has an empty part (a doubled, leading or trailing '/'); write it as family/task, e.g. tf/0"
    if any(part in (".", "..") for part in parts):
        return "has a '.' or '..' part; name the task by its plain path under data=, e.g. tf/0"
    return None


def check_task_name(name: str, error: type[InputError] = DataError, where: str = "task") -> str:
    """`name`, or `error` naming it (and `where` it was given) with what is wrong."""
    problem = task_name_problem(name)
    if problem:
        raise error(f"{where} {name!r} {problem}")
    return name


def load_task(name: str, data_root: str | None = None) -> TaskData:
    """Load a task by name: synthetic ones need no data; anything else is read under `data_root`."""
    check_task_name(name)
    if name in SPECS:
        return make_synthetic_task(name)
    if not data_root:
        raise DataError(
            f"task {name!r} is not synthetic; pass the folder that holds it, e.g. "
            f"-P data=/path/to/GUE (layout <data>/{name}/{{train,dev,test}}.csv). "
            f"Synthetic tasks: {', '.join(SPECS)}"
        )
    task = load_gue_task(data_root, name)
    expected = TASKS.get(name).num_classes if name in TASKS else None
    if expected is not None and task.num_classes != expected:
        raise DataError(f"{task.source}: GUE task {name} has {expected} classes, the files have "
                        f"{task.num_classes}. Check that data= points at the GUE root.")
    return task
