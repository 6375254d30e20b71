"""Arm registry. An arm is one model x tokenizer x initialisation; adding one is one `register` line below.

The interface is in `base.py` (what an arm declares, validates and answers); the torch arms, all trained by
the one training loop, are in `neural.py`; the one-pass scikit-learn baselines are in `estimators.py` (their
shared fit), `kmer.py` (k-mer counts) and `onehot.py` (the one-hot of every position); the arms of any native
transformers masked LM (`checkpoint=`) are in `hf.py`. `family` names the search space the study file declares
for the arm.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Arm, Budget, Fitted, RunOptions
from .hf import HFArm
from .kmer import KmerLogRegArm
from .neural import TorchArm
from .onehot import OneHotLogRegArm

__all__ = ["ARMS", "Arm", "Budget", "Fitted", "HFArm", "KmerLogRegArm", "OneHotLogRegArm", "RunOptions", "TorchArm"]

ARMS: Registry[Arm] = Registry("arm")


def register(arm: Arm) -> None:
    ARMS.add(arm.name, arm)


register(TorchArm("unet_char", "cnn", "unet", "char", "1-D U-Net on single-nucleotide tokens, random init"))
register(TorchArm("unet_bpe", "cnn", "unet", "bpe",
                  "1-D U-Net on BPE tokens (tokenizer= or trained on the task), random init"))
register(TorchArm("convnova_char", "cnn", "convnova", "char",
                  "ConvNova gated dilated CNN on one-hot nucleotides, random init (or init=)"))
register(TorchArm("convnova_bpe", "cnn", "convnova", "bpe",
                  "ConvNova on BPE token embeddings (tokenizer= or trained on the task)"))
register(TorchArm("dnabert2_pretrained", "transformer", "dnabert2", "bpe",
                  "DNABERT-2 fine-tuned from checkpoint= (e.g. the published 117M)",
                  requires_checkpoint=True, stand_in="dnabert2_scratch"))
register(TorchArm("dnabert2_scratch", "transformer", "dnabert2", "bpe",
                  "DNABERT-2 architecture on BPE tokens, BERT random init"))
register(TorchArm("dnabert2_char_scratch", "transformer", "dnabert2", "char",
                  "DNABERT-2 architecture on single-nucleotide tokens, random init"))
register(HFArm("hf_pretrained", "hf", "hf", "hf",
               "any transformers masked LM (BERT, RoBERTa, ESM ...) fine-tuned from checkpoint=, its own tokenizer",
               requires_checkpoint=True, checkpoint_reader="hf"))
register(HFArm("hf_scratch", "hf", "hf", "hf",
               "checkpoint='s transformers network and tokenizer from random weights (the twin of hf_pretrained)",
               shaped_by_checkpoint=True, checkpoint_reader="hf"))
register(KmerLogRegArm("kmer_logreg", "kmer", "logistic_regression", "kmer",
                       "k-mer counts + logistic regression (scikit-learn), the cheapest honest baseline"))
register(OneHotLogRegArm("onehot_logreg", "onehot", "logistic_regression", "onehot",
                         "one-hot of every position + logistic regression (scikit-learn), the positional baseline"))
