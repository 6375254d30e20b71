"""Probing (`mode=probe`): a frozen backbone's embeddings, computed once and cached on disk, and a head trained on
them (models/probe.py) by the one training loop.

A torch arm with a checkpoint (pretrained weights, or the shape of a scratch twin) runs in probe mode when the
request says `mode=probe`. Its backbone never trains: each split is passed through it once (batched, on the
runtime's device, under bf16 autocast where the runtime uses bf16), every (layer, pooling) the study's probe
space can ask for is pooled from that one pass, and each is stored under a key made of what it depends on:

    the network (its weights' sha256, or the seed a twin's random ones are drawn with; its config; the code and
                 library versions that run it)
    x the tokenizer's fingerprint x the split's content x the token cap x the precision x the layer x the pooling

so that every trial and final seed of a cell, every worker on the machine, and a rerun after a crash read the
same file (`HARNESS_CACHE_DIR`/embeddings/). A twin's random backbone is drawn once per cell (seed
`BACKBONE_SEED`), as the pretrained backbone is fixed: seeds vary the head, in both.

Cost: the pass's seconds and FLOPs are stored with it; a probed cell's final runs log the passes over train, dev
and test (`embed_seconds`, `embed_flops`), the same for every seed, which the analysis counts once per cell.
Each fit's runs say where its embeddings came from (tag `embeddings`: `train computed, dev cached`).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import train
from .data import TaskData
from .models import DEFAULT_DROPOUT
from .models.probe import PROBE_DEFAULTS, ProbedClassifier, ProbeHead, pool
from .runtime import Runtime
from .schema import Artifact, Metric, Tag
from .tokenizers import DNATokenizer, TokenizedSplit, cache_dir, tokenize

log = logging.getLogger("harness")

CACHE_FORMAT = "embeddings-v1"  # bump when what a cache entry holds changes
BACKBONE_SEED = 1009  # a random twin's frozen weights: one draw per cell, the same for every trial and seed (not 0:
# a checkpoint saved straight after a seed-0 initialisation would otherwise be its own twin)
View = tuple[int, str]  # (layer, pooling)
# This process's most recent entries, so that a cell's trials do not reread the disk; bounded, since a sweep runs
# cell after cell in one process and an entry of a big task is ~100 MB (30,000 x 768 float32).
_memory: OrderedDict[str, train.FeatureSplit] = OrderedDict()
MEMORY_ENTRIES = 6


@dataclass(frozen=True)
class Backbone:
    """A frozen network a probe reads, identified by content: `weights` keys the cache; `build` makes the
    network (a harness classifier with `hidden_states`) only where an embedding is missing."""

    weights: str  # a digest of the weights (or a twin's seed), the config and the code that runs the network
    build: Callable[[], nn.Module]
    tokenizer: DNATokenizer
    max_length: int | None  # the token cap the backbone reads sequences with
    description: dict[str, Any] = field(default_factory=dict)  # its architecture, for the run's model config


@dataclass(frozen=True)
class PassCost:
    seconds: float
    flops: float


@functools.cache
def model_code_digest() -> str:
    """sha256 of the harness's model code (harness/models/*.py): a change to how a network computes invalidates
    the embeddings it cached."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.joinpath("models").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def pass_key(backbone: Backbone, split_fingerprint: str, precision: str) -> str:
    """One forward pass of a split: everything its embeddings depend on but the layer and the pooling."""
    text = f"{CACHE_FORMAT}|{backbone.weights}|{backbone.tokenizer.fingerprint}|{split_fingerprint}|" \
           f"{backbone.max_length}|{precision}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def view_file(folder: Path, view: View) -> Path:
    layer, pooling = view
    return folder / f"layer{layer}_{pooling}.npy"


@torch.inference_mode()
def embed(model: nn.Module, tokens: TokenizedSplit, pad_id: int, runtime: Runtime,
          views: list[View]) -> tuple[dict[View, np.ndarray], PassCost]:
    """One pass of `model` over a split: every view's pooled embeddings [N, H] (float32, in the split's order) and
    the pass's cost (FLOPs counted on the first batch that reaches the median length, scaled by the tokens).
    Batches as `train.predict` scores them (`train.in_length_order`: halved where memory runs out)."""
    model.to(runtime.device).eval()
    median_length = float(np.median(tokens.lengths))
    flops_per_token, n_tokens = 0.0, 0
    began = time.perf_counter()

    def pooled_views(idx: np.ndarray) -> dict[View, torch.Tensor]:  # the batch's hidden states die on return
        nonlocal flops_per_token, n_tokens
        input_ids, mask, _ = train.collate(tokens, idx, pad_id, runtime.device)
        count = not flops_per_token and tokens.lengths[idx].max() >= median_length  # attention grows with length
        with FlopCounterMode(display=False) if count else nullcontext() as counter:
            with runtime.autocast():
                states = model.hidden_states(input_ids, mask)
            pooled = {v: pool(states[v[0]], mask, v[1]).cpu() for v in views}  # in float32
        if counter is not None:
            flops_per_token = counter.get_total_flops() / input_ids.numel()
        n_tokens += input_ids.numel()
        return pooled

    chunks, order = train.in_length_order(tokens.lengths, runtime.eval_batch_size, pooled_views, "embedding")
    train.free_memory()  # a worker sharing the GPU gets the pass's memory back
    arrays = {v: train.in_split_order([chunk[v] for chunk in chunks], order) for v in views}
    return arrays, PassCost(time.perf_counter() - began, flops_per_token * n_tokens)


def embeddings(backbone: Backbone, task: TaskData, split: str, view: View, views: tuple[View, ...],
               runtime: Runtime) -> tuple[train.FeatureSplit, str]:
    """The split's pooled embeddings for `view` and whether they were `cached` or `computed`. A miss computes, in
    one pass, every view of `views` (the study's probe space) not yet stored, and stores each; workers that miss
    together wait for the first one's pass (a lock file beside the entry) instead of repeating it."""
    data = task.split(split)
    folder = cache_dir() / "embeddings" / pass_key(backbone, data.fingerprint, runtime.precision)
    memory_key = f"{folder.name}/{view_file(folder, view).name}"
    if memory_key in _memory:
        _memory.move_to_end(memory_key)
        return _memory[memory_key], "cached"
    source, meta = "cached", read_meta(folder)
    if meta is None or not view_file(folder, view).is_file():
        with entry_lock(folder):
            meta = read_meta(folder)  # again, under the lock: another worker may have written it meanwhile
            wanted = [v for v in sorted({view, *views}) if meta is None or not view_file(folder, v).is_file()]
            if wanted:
                source = "computed"
                tokens = tokenize(backbone.tokenizer, data, backbone.max_length)
                arrays, cost = embed(backbone.build(), tokens, backbone.tokenizer.pad_id, runtime, wanted)
                meta = write_entry(folder, arrays, cost, tokens, meta)
                log.info("embedded %s of %s: %d sequences, %d view(s), %.1fs", split, task.name, len(tokens),
                         len(wanted), cost.seconds)
    features = train.FeatureSplit(np.load(view_file(folder, view)), data.labels, int(meta["truncated"]))
    _memory[memory_key] = features
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)
    return features, source


@contextmanager
def entry_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on one cache entry (flock: workers on one machine; on a shared file system, as its
    mount honours flock)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_meta(folder: Path) -> dict[str, Any] | None:
    """An entry's record (written last: an entry without one is incomplete and computed again)."""
    path = folder / "pass.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_entry(folder: Path, arrays: dict[View, np.ndarray], cost: PassCost, tokens: TokenizedSplit,
                meta: dict[str, Any] | None) -> dict[str, Any]:
    """Each view's array, then the record (each pass: the views it made and its cost; truncation), every file
    written whole to a temporary name and renamed: a reader sees a whole entry or none."""
    folder.mkdir(parents=True, exist_ok=True)
    for view, array in arrays.items():
        atomic_write(view_file(folder, view), lambda f, a=array: np.save(f, a))
    passes = [p for p in (meta or {}).get("passes", []) if not set(map(tuple, p["views"])) <= set(arrays)]
    passes.append({"views": sorted(arrays), "seconds": cost.seconds, "flops": cost.flops})
    record = {"passes": passes, "truncated": tokens.truncated, "n": len(tokens)}
    atomic_write(folder / "pass.json", lambda f: f.write(json.dumps(record).encode()))
    return record


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    tmp.replace(path)


def pass_cost(backbone: Backbone, task: TaskData, runtime: Runtime, views: tuple[View, ...]) -> dict[str, float]:
    """What embedding train, dev and test cost a cell: each pass that made one of its views (`views`: what its
    search space can ask for), once, whatever other studies' passes added to the same entries."""
    seconds = flops = 0.0
    for split in ("train", "dev", "test"):
        meta = read_meta(cache_dir() / "embeddings" / pass_key(backbone, task.split(split).fingerprint,
                                                               runtime.precision))
        for made in (meta or {}).get("passes", []):
            if set(map(tuple, made["views"])) & set(views):
                seconds, flops = seconds + made["seconds"], flops + made["flops"]
    return {Metric.EMBED_SECONDS: seconds, Metric.EMBED_FLOPS: flops}


def probe_params(params: dict[str, Any]) -> dict[str, Any]:
    """The probe's head and view: the trial's values, else the defaults (models/probe.py)."""
    return {k: type(v)(params.get(k, v)) for k, v in PROBE_DEFAULTS.items()}


# ------------------------------------------------------------------------------------------------ fitting
@dataclass
class ProbeFitted:
    """A probe trained on one view of a frozen backbone; predicts a split from its cached embeddings."""

    head: ProbeHead
    backbone: Backbone
    view: View
    task: TaskData
    views: tuple[View, ...]
    runtime: Runtime
    result: train.FitResult
    architecture: dict[str, Any]
    sources: dict[str, str]  # split -> cached | computed
    export_backbone: Callable[[Path], None]  # writes the backbone as its arm exports a fine-tuned network

    @property
    def n_params(self) -> int:
        """Trained parameters: the head's (the backbone's are frozen)."""
        return sum(p.numel() for p in self.head.parameters())

    def features(self, split: str) -> train.FeatureSplit:
        features, source = embeddings(self.backbone, self.task, split, self.view, self.views, self.runtime)
        self.sources.setdefault(split, source)  # the first read's: where this fit's embeddings came from
        self.result.tags = sources_tag(self.sources)
        return features

    def predict(self, split: str) -> np.ndarray:
        return train.predict(self.head, self.features(split), 0, self.runtime)

    def truncated(self) -> dict[str, int]:
        return {split: self.features(split).truncated for split in ("train", "dev", "test")}

    def artifacts(self, folder: Path) -> list[Path]:
        config = folder / Artifact.MODEL_CONFIG
        config.write_text(json.dumps({"model": "ProbedClassifier", "architecture": self.architecture,
                                      "embeddings": self.sources}, indent=2, default=str))
        return [config]

    def export(self, folder: Path) -> None:
        """backbone/ (as the arm exports a fine-tuned network: weights, config, tokenizer), head.safetensors and
        config.json (kind probe: the layer, pooling and head), which `serving.load_probe` puts back together."""
        folder.mkdir(parents=True, exist_ok=True)
        self.export_backbone(folder / "backbone")
        save_model(self.head, str(folder / "head.safetensors"))
        layer, pooling = self.view
        head = {k: self.architecture[k] for k in ("head", "head_hidden")}
        config = {"kind": "probe", "layer": layer, "pooling": pooling, "head": head,
                  "hidden_size": int(self.head.mean.numel()), "num_classes": self.task.num_classes}
        (folder / "config.json").write_text(json.dumps(config, indent=2))


def fit_probe(backbone: Backbone, task: TaskData, params: dict[str, Any], seed: int, cfg: train.TrainConfig,
              views: tuple[View, ...], runtime: Runtime, on_epoch: train.EpochCallback | None,
              export_backbone: Callable[[Path], None]) -> ProbeFitted:
    """Train a probe head (the trial's head, layer and pooling) on the cached embeddings of train; dev picks the
    epoch, as for every arm."""
    chosen = probe_params(params)
    view: View = (chosen["layer"], chosen["pooling"])
    sources: dict[str, str] = {}
    train_features, sources["train"] = embeddings(backbone, task, "train", view, views, runtime)
    dev_features, sources["dev"] = embeddings(backbone, task, "dev", view, views, runtime)
    train.seed_everything(seed)
    head = ProbeHead(train_features.features.shape[1], task.num_classes, chosen["head"], chosen["head_hidden"],
                     float(params.get("dropout", DEFAULT_DROPOUT)))
    head.standardise_with(torch.from_numpy(train_features.features))
    result = train.fit(head, train_features, dev_features, 0, cfg, runtime, on_epoch)
    result.tags = sources_tag(sources)
    architecture = {"backbone": backbone.description, "weights": backbone.weights, **chosen}
    return ProbeFitted(head, backbone, view, task, views, runtime, result, architecture, sources, export_backbone)


def sources_tag(sources: dict[str, str]) -> dict[str, str]:
    """Tag `embeddings` of a fit's run: `train computed, dev cached, test cached`."""
    return {Tag.EMBEDDINGS: ", ".join(f"{split} {source}" for split, source in sources.items())}


def views_of(space: dict[str, Any], fixed: dict[str, Any]) -> tuple[View, ...]:
    """Every (layer, pooling) a probe search space can ask for: what one pass over a split pools."""
    def values(name: str) -> list[Any]:
        if name in fixed:
            return [fixed[name]]
        if name not in space:
            return [PROBE_DEFAULTS[name]]
        dist = space[name]
        if hasattr(dist, "choices"):
            return list(dist.choices)
        return list(range(int(dist.low), int(dist.high) + 1, int(getattr(dist, "step", 1) or 1)))

    # A value that is no layer index is left to the study's checks (Arm.check_values), which name it.
    layers = [v for v in values("layer") if isinstance(v, int) and not isinstance(v, bool)]
    return tuple(sorted((layer, str(pooling)) for layer in layers for pooling in values("pooling")))
