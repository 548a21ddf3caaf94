"""The test vectors in docs/ are what the protocol code computes today."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "vectors.py"


def _check(vectors: Path, protocol: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--check",
            "--vectors",
            str(vectors),
            "--protocol",
            str(protocol),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docs_vectors_match_the_code() -> None:
    done = _check(ROOT / "docs" / "vectors.json", ROOT / "docs" / "PROTOCOL.md")
    assert done.returncode == 0, done.stderr


def test_a_changed_vector_is_caught(tmp_path: Path) -> None:
    vectors = tmp_path / "vectors.json"
    protocol = tmp_path / "PROTOCOL.md"
    shutil.copy(ROOT / "docs" / "PROTOCOL.md", protocol)
    data = json.loads((ROOT / "docs" / "vectors.json").read_text())
    data["config"]["network_id"] = "00" * 32
    vectors.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    done = _check(vectors, protocol)
    assert done.returncode == 1
    assert "vectors.json" in done.stderr
