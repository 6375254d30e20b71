"""Any masked-LM checkpoint that transformers implements natively (BERT, RoBERTa, ESM, ...) as a classifier.

    HFSequenceClassifier: input_ids, attention_mask [B, L]
        -> backbone (transformers' AutoModel of the checkpoint's config.json)  last_hidden_state [B, L, H]
        -> pool over the sequence (`pooling`)                                  [B, H]
        -> dropout -> Linear                                                   logits [B, C]

It answers the call every harness classifier answers (`forward(input_ids, attention_mask) -> logits`, padding
on the right marked 0 in the mask), so that `train.fit` and `train.predict` run it unchanged.

Pooling (`pooling`, a hyperparameter of the `hf` search space; `heads.py` has the shared ones):
    mean    the mean of the features over valid tokens (attention mask 1), special tokens included
    first   the first token's features: [CLS] / <cls>, the summary token BERT-style models are trained with
    max, attention, positional   as for the CNNs (heads.py)
Padding never enters a pooled vector, so a sequence scores the same alone and in a padded batch.

Weights: `pretrained_backbone` loads the checkpoint's (`AutoModel.from_pretrained(folder)`, which drops a
masked-LM's `lm_head` and strips its `bert.` / `esm.` prefix) and refuses a checkpoint that leaves any backbone
weight missing, which transformers would otherwise initialise at random with a warning; `random_backbone` builds
the same network from the config with transformers' own initialisation (`AutoModel.from_config`), the scratch
twin. The BERT-style pooler (a dense layer on [CLS] for next-sentence prediction) is left out where the model
class allows it: the head pools for itself. Weights are float32 whatever the checkpoint's dtype (bf16 runs use
autocast, as every arm does). `dropout` is the head's; the backbone keeps its config's own dropout.
Nothing here passes `trust_remote_code`: configs naming custom code are refused when the checkpoint is opened
(`checkpoints.open_hf_checkpoint`).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..registry import Registry
from .heads import POOLINGS, AttentionPooling

log = logging.getLogger(__name__)


class FirstTokenPooling(nn.Module):
    """features [B, L, H], mask [B, L] -> the first position's features [B, H] (the harness pads on the right)."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return features[:, 0]


HF_POOLINGS: Registry[type[nn.Module]] = Registry("pooling")
HF_POOLINGS.add("first", FirstTokenPooling)
for _name, _cls in POOLINGS.items():
    HF_POOLINGS.add(_name, _cls)


def make_hf_pooling(name: str, hidden_size: int) -> nn.Module:
    cls = HF_POOLINGS.get(name, "pooling")
    return cls(hidden_size) if issubclass(cls, AttentionPooling) else cls()


class HFSequenceClassifier(nn.Module):
    """A transformers backbone under a pooled linear head (module docstring)."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.1, pooling: str = "mean") -> None:
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.pooling = pooling
        self.pool = make_hf_pooling(pooling, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(self.classifier.weight.dtype)  # fp32 under autocast: pooled sums in fp32
        return self.classifier(self.dropout(self.pool(features, mask)))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The embeddings' output, then each layer's [B, L, H] (transformers' hidden_states): what a probe reads."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states


def load_config(folder: Path):
    """The checkpoint's config (transformers' own class for its model_type; never its code)."""
    import transformers
    from transformers import AutoConfig

    # Its per-load and per-save progress bars would interleave with the harness's own progress lines, per trial.
    transformers.utils.logging.disable_progress_bar()

    return AutoConfig.from_pretrained(str(folder))


def backbone_options(config) -> dict[str, Any]:
    """`add_pooling_layer=False` where the model class takes it (BERT, RoBERTa, ESM): the head pools itself."""
    from transformers import AutoModel

    model_class = AutoModel._model_mapping[type(config)]
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters \
        else {}


def random_backbone(config) -> nn.Module:
    """The checkpoint's network with transformers' random initialisation (the scratch twin)."""
    from transformers import AutoModel

    return AutoModel.from_config(config, **backbone_options(config)).float()


def pretrained_backbone(folder: Path, config) -> nn.Module:
    """The checkpoint's network with its weights; a backbone weight the checkpoint lacks is an error."""
    import transformers
    from transformers import AutoModel

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report lists the lm_head left out: expected
    try:
        model, info = AutoModel.from_pretrained(str(folder), config=config, output_loading_info=True,
                                                dtype=torch.float32, **backbone_options(config))
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise CheckpointError(f"checkpoint {folder}: its weights do not fill the {type(model).__name__} its config "
                              f"describes ({len(missing)} missing, e.g. {missing[:4]}; {len(mismatched)} of another "
                              f"shape, e.g. {mismatched[:4]}); fine-tuning it would start partly from random weights")
    return model.float()


def hf_classifier(backbone: nn.Module, num_classes: int, dropout: float, pooling: str) -> HFSequenceClassifier:
    return HFSequenceClassifier(backbone, num_classes, dropout, pooling)


# Models whose absolute positions start after the padding index (RoBERTa's and ESM's create_position_ids):
# max_position_embeddings counts padding_idx + 1 positions that no token can use.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "esm", "data2vec-text")


def position_limit(config) -> int | None:
    """The most tokens the network can embed (absolute position embeddings), or None (rotary, relative, ALiBi)."""
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if config.model_type in POSITIONS_AFTER_PADDING:
        limit -= (config.pad_token_id or 0) + 1
    return limit
