"""The submitter's side: read texts, sign Submissions, talk to a node's HTTP API, and check the
answers offline (protocol/submissions.verify_answer). Used by `dlnet submit` and `dlnet
embeddings`; every mistake is a `ClientError` with one line saying what to fix."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dlnet.node.submissions import SUBMIT_MARGIN
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.submissions import ProofError, capacity, target_round, verify_answer
from dlnet.protocol.wire import MAX_TEXT_BYTES, encode, message_id, sign_submission

HTTP_TIMEOUT = 30.0
FINISHED = ("final", "no_embedding", "not_scheduled", "not_finalized")


class ClientError(Exception):
    """A submit or lookup that cannot go on; the text is one line naming the fix."""


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Texts of a file: JSON Lines (``.jsonl``: each line an object with ``field`` or a JSON
    string) or plain text (one text a line); blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"--file {path}: cannot read it ({exc})") from None
    texts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                value = json.loads(line)
            except ValueError:
                raise ClientError(f"--file {path}:{n}: not JSON — one JSON value a line") from None
            if isinstance(value, dict):
                value = value.get(field)
            if not isinstance(value, str):
                raise ClientError(
                    f'--file {path}:{n}: expected a string or an object with "{field}"'
                )
            line = value
        if len(line.split()) < 2 or len(line.encode()) > MAX_TEXT_BYTES:
            raise ClientError(
                f"--file {path}:{n}: a text needs 2 or more words and at most "
                f"{MAX_TEXT_BYTES} bytes of UTF-8"
            )
        texts.append(line)
    if not texts:
        raise ClientError(f"--file {path}: no texts in it")
    return texts


def _request(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            doc = json.loads(exc.read())
        except ValueError:
            doc = {"error": exc.reason}
        return exc.code, doc if isinstance(doc, dict) else {"error": str(doc)}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(
            f"--api {url}: no answer ({reason}) — is the node running with --api?"
        ) from None


def submit(
    cfg: NetworkConfig, api: str, key: SigningKey, texts: list[str], first_round: int | None = None
) -> list[dict[str, Any]]:
    """Sign the texts as Submissions of ``capacity(cfg)`` texts each (one per round: one key
    has one submission per round), for consecutive rounds from the first one that leaves
    SUBMIT_MARGIN seconds, and post them to the node; returns the node's receipts."""
    cap = capacity(cfg)
    if cap < 1:
        raise ClientError("this network takes no submissions (shards_per_round < 2)")
    start = target_round(cfg, time.time(), SUBMIT_MARGIN) if first_round is None else first_round
    receipts = []
    for i in range(0, len(texts), cap):
        msg = sign_submission(key, cfg.network_id, start + i // cap, tuple(texts[i : i + cap]))
        data = encode(msg)
        code, doc = _request(api.rstrip("/") + "/v1/submissions", {"message": data.hex()})
        if code not in (200, 202):
            raise ClientError(f"the node refused submission {i // cap}: {doc.get('error', doc)}")
        assert doc.get("id") == message_id(data).hex()
        receipts.append(doc)
    return receipts


def fetch(api: str, submission_id: str) -> dict[str, Any]:
    code, doc = _request(api.rstrip("/") + f"/v1/submissions/{submission_id}")
    if code != 200:
        raise ClientError(f"submission {submission_id}: {doc.get('error', doc)}")
    return doc


def wait_for(api: str, submission_id: str, wait: float, every: float = 5.0) -> dict[str, Any]:
    """The node's answer once the submission's round is settled, or the latest after ``wait``
    seconds."""
    deadline = time.monotonic() + wait
    while True:
        doc = fetch(api, submission_id)
        if doc.get("state") in FINISHED or time.monotonic() >= deadline:
            return doc
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))


def checked(cfg: NetworkConfig, answer: dict[str, Any]) -> dict[str, Any]:
    """A node's answer with a certificate verified offline against the network config: the
    same answer with ``verified: true`` and each embedding as a float list (None where the
    certified vector is zero, ``empty: true``: no embedding); `ProofError` if it does not prove
    what it claims. The certificate alone is the proof (the schedule votes are not needed)."""
    try:
        vectors = [bytes.fromhex(e["float32_le_hex"]) for e in answer["embeddings"]]
        shards = [int(e["shard"]) for e in answer["embeddings"]]
        proven = verify_answer(
            cfg,
            bytes.fromhex(answer["submission"]),
            bytes.fromhex(answer["certificate"]),
            shards,
            vectors,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"the answer lacks a proof field ({exc})") from None
    import numpy as np

    return {
        **answer,
        "state": "no_embedding" if any(p.empty for p in proven) else "final",
        "verified": True,
        "embeddings": [
            {
                "text": p.text,
                "shard": p.shard,
                "float32_le_hex": p.vector.hex(),
                "empty": p.empty,
                "embedding": None if p.empty else np.frombuffer(p.vector, dtype="<f4").tolist(),
            }
            for p in proven
        ],
    }
