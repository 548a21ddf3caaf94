"""Fine-tune all-MiniLM-L6-v2 for the honest pool: BitFit + unsupervised SimCSE on the corpus.

    python scripts/finetune.py [--steps N] [--out PATH]

Only the bias terms of the embeddings LayerNorm and the transformer layers are trained (BitFit;
26k of 22.7M parameters); every other weight stays pretrained. The objective is unsupervised
SimCSE with in-batch negatives: each corpus item is encoded twice, with dropout on and each
view keeping a random half of the words (dropout alone is no task for this model: its SimCSE
loss starts at 0.0000 on batches of 32), and the two views of an item must be closer (cosine,
temperature 0.05) than any other item of the batch. The only data is the shipped corpus
(data/corpus.txt, WordNet glosses); the labelled sets that measure quality (data/labelled/)
are never read, and nothing here was tuned on them.

Deterministic: fixed seeds for the batch order, the word crops and torch (dropout), one
thread, ``torch.use_deterministic_algorithms``; with the same torch build on the same CPU the
output file (safetensors, tensors sorted by name, one metadata entry) is identical byte for
byte (checked: two runs gave bit-identical tensors). The
default output is the file shipped in the package (``dlnet.node.models.minilm.FINETUNED_FILE``).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from pathlib import Path
from typing import Any

from dlnet.data import shipped_path
from dlnet.node.models.minilm import FINETUNED_FILE, MiniLM
from dlnet.protocol.dataset import parse_dataset

SEED = 0
BATCH = 64
STEPS = 150
LR = 1e-3
TEMPERATURE = 0.05
MAX_TOKENS = 64
KEEP = 0.5


def trainable(name: str) -> bool:
    """BitFit: every bias the pooled output depends on (the unused pooler is left out)."""
    return name.endswith(".bias") and not name.startswith("pooler.")


def crop(text: str, rng: random.Random) -> str:
    """A random view of ``text``: each word kept with probability KEEP, in order (at least 2)."""
    words = text.split()
    kept = [w for w in words if rng.random() < KEEP]
    return " ".join(kept if len(kept) >= 2 else words[:2])


def finetune(steps: int, out: Path) -> None:
    import torch
    import torch.nn.functional as functional

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    minilm = MiniLM(threads=1, max_tokens=MAX_TOKENS)
    model = minilm.model
    params = {n: p for n, p in model.named_parameters() if trainable(n)}
    for name, p in model.named_parameters():
        p.requires_grad_(name in params)
    optimiser = torch.optim.AdamW(list(params.values()), lr=LR, weight_decay=0.0)
    items = list(parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines"))
    order: list[str] = []
    rng = random.Random(SEED)
    model.train()
    start = time.time()
    for step in range(steps):
        if len(order) < BATCH:
            order += rng.sample(items, len(items))
        batch, order = order[:BATCH], order[BATCH:]
        views = minilm.pool([crop(t, rng) for t in batch + batch])
        z = functional.normalize(views, dim=1)
        sims = z[:BATCH] @ z[BATCH:].T / TEMPERATURE
        loss = functional.cross_entropy(sims, torch.arange(BATCH))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - start:6.1f} s")
    save({n: p.detach().clone().contiguous() for n, p in params.items()}, steps, out)


def save(tensors: dict[str, Any], steps: int, out: Path) -> None:
    """Write the tensors as safetensors with ONE metadata entry: safetensors keeps metadata in
    a hash map whose order varies from run to run, so a single key keeps the bytes fixed."""
    import torch
    from safetensors.torch import save_file

    recipe = (
        f"scripts/finetune.py: BitFit + unsupervised SimCSE on data/corpus.txt; steps={steps} "
        f"batch={BATCH} lr={LR} temperature={TEMPERATURE} keep={KEEP} seed={SEED} "
        f"torch={torch.__version__}"
    )
    save_file(dict(sorted(tensors.items())), str(out), metadata={"recipe": recipe})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {digest})")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", type=Path, default=FINETUNED_FILE)
    args = ap.parse_args()
    finetune(args.steps, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
