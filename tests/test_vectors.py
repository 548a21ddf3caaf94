"""The test vectors in docs/ are what the protocol code computes today (`scripts/vectors.py
--check`, run in this process)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "vectors.py"
# Under pytest-xdist (--dist loadgroup): one worker computes the vectors, once.
pytestmark = pytest.mark.xdist_group("vectors")


@pytest.fixture(scope="module")
def vectors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dlnet_vectors_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    computed = module.compute()  # once for both tests (about a second): --check only reads it
    module.compute = lambda: computed
    return module


def _check(
    vectors: ModuleType, capsys: pytest.CaptureFixture[str], json_file: Path, protocol: Path
) -> tuple[int, str]:
    """`scripts/vectors.py --check --vectors JSON_FILE --protocol PROTOCOL`: exit code, stderr."""
    capsys.readouterr()
    code = vectors.main(["--check", "--vectors", str(json_file), "--protocol", str(protocol)])
    return code, capsys.readouterr().err


def test_docs_vectors_match_the_code(
    vectors: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _check(
        vectors, capsys, ROOT / "docs" / "vectors.json", ROOT / "docs" / "PROTOCOL.md"
    )
    assert code == 0, err


def test_a_changed_vector_is_caught(
    vectors: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    json_file = tmp_path / "vectors.json"
    protocol = tmp_path / "PROTOCOL.md"
    shutil.copy(ROOT / "docs" / "PROTOCOL.md", protocol)
    data = json.loads((ROOT / "docs" / "vectors.json").read_text())
    data["config"]["network_id"] = "00" * 32
    json_file.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    code, err = _check(vectors, capsys, json_file, protocol)
    assert code == 1
    assert "vectors.json" in err
