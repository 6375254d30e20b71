"""Published weights: reading them without running pickled code, and loading them by key name.

Every model loads a checkpoint the same way, through `load_by_key_name`, declaring which keys may differ:
`fresh` keys are never taken from the checkpoint (a new task's classifier), `may_lack` keys may be absent
from it (a head it was not trained with), `may_leave` keys of it may go unused (a head this model does not
have). Any other missing or unused key, or a shape that differs, is a CheckpointError naming the keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_by_key_name(model: nn.Module, state: dict[str, torch.Tensor], *, fresh: tuple[str, ...] = (),
                     may_lack: tuple[str, ...] = (), may_leave: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`; the key-name prefixes say which keys may differ (see the module)."""
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # torch reports every shape that differs: a different architecture
        shapes = [line.strip() for line in str(err).splitlines() if line.strip().startswith("size mismatch")]
        if not shapes:
            raise
        raise CheckpointError(f"checkpoint does not fit this model's architecture ({len(shapes)} weight shape(s) "
                              f"differ): {'; '.join(shapes[:4])}") from None
    missing = [k for k in result.missing_keys if not k.startswith(fresh + may_lack)]
    unused = [k for k in result.unexpected_keys if not k.startswith(may_leave)]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} weight(s) this model needs: {missing[:8]}")
    if unused:
        raise CheckpointError(f"checkpoint has {len(unused)} weight(s) this model does not know: {unused[:8]}")


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin read with weights_only=True (no pickled code runs)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"checkpoint {folder}: neither {' nor '.join(WEIGHT_FILES)}")


def download_from_hub(repo_id: str, files: tuple[str, ...] = (), what: str = "checkpoint folder",
                      fix: str = "that folder") -> Path:
    """A hub repository's config, weights and tokenizer (never its code), or just `files`; offline, a clear
    error within seconds (the hub client is not left to retry)."""
    import os

    from huggingface_hub import snapshot_download

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(files) or [
            "config.json", *WEIGHT_FILES, "tokenizer.json", "tokenizer_config.json"]))
    except Exception as err:  # offline, unknown id, no access: all end the same way for the user
        raise CheckpointError(
            f"{repo_id}: not a local {what}, and the hub could not provide it ({type(err).__name__}). Download "
            f"it where you have network (e.g. `hf download {repo_id} --local-dir {repo_id.split('/')[-1]}`) and "
            f"pass {fix} instead."
        ) from None
