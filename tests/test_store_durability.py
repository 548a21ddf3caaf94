"""The store: placement rules, and nothing a writer was told is stored is lost to kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dlnet.node.store import PutStatus, Store, StoreError

WRITER = """
import sys
from pathlib import Path
from dlnet.node.store import Store
store = Store.open(Path(sys.argv[1]))
i = 0
while True:
    mid = i.to_bytes(32, "big")
    store.put_message(2, mid, i // 20, b"k" * 32, i % 4, i % 5, mid, b"x" * 4200)
    store.bump_counter("accepted:embedding")
    print(i, flush=True)
    i += 1
"""


def test_put_message_places_one_message_per_slot(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite")
    first = store.put_message(2, b"a" * 32, 1, b"k" * 32, 0, 1, b"c" * 32, b"first")
    assert first.status is PutStatus.NEW
    assert (
        store.put_message(2, b"a" * 32, 1, b"k" * 32, 0, 1, b"c" * 32, b"first").status
        is PutStatus.DUPLICATE
    )
    other = store.put_message(2, b"b" * 32, 1, b"k" * 32, 0, 1, b"d" * 32, b"second")
    assert other.status is PutStatus.CONFLICT and other.existing == b"first"
    assert store.get_by_commitment(b"c" * 32) == b"first"
    assert store.get_by_commitment(b"c" * 32, rounds=range(2, 3)) is None
    assert store.messages(2, 1) == [b"first"]
    store.put_round_outcome(1, True, b"d" * 32)
    store.put_round_outcome(1, False, None)  # a finalized outcome is never overwritten
    assert store.round_outcomes() == [(1, True, b"d" * 32)]
    store.close()


def test_a_batch_commits_its_writes_together_or_none(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError), store.batch():
        store.put_message(2, b"a" * 32, 1, b"k" * 32, 0, 0, b"c" * 32, b"lost")
        store.bump_counter("accepted:embedding")
        raise RuntimeError("the node dies mid-push")
    assert store.messages(2, 1) == [] and store.counters() == {}
    with store.batch():
        store.put_message(2, b"a" * 32, 1, b"k" * 32, 0, 0, b"c" * 32, b"kept")
        with store.batch():  # joins the outer one
            store.bump_counter("accepted:embedding")
        # Not visible to another connection before the outer batch ends.
        other = Store.open(tmp_path / "s.sqlite")
        assert other.messages(2, 1) == []
    assert other.messages(2, 1) == [b"kept"] and other.counters() == {"accepted:embedding": 1}
    store.close()
    other.close()


@pytest.mark.parametrize(
    ("options", "level"),
    [({}, 1), ({"durable": True}, 2), ({"synced": False}, 0)],
)
def test_a_store_syncs_as_opened(tmp_path: Path, options: dict[str, bool], level: int) -> None:
    """NORMAL by default, FULL when durable, OFF (a test's throwaway store) when not synced;
    always in WAL mode."""
    store = Store.open(tmp_path / "s.sqlite", **options)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (level,)
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()


def test_newer_schema_or_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        Store.open(junk)


def test_kill_9_loses_nothing_the_writer_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    reported = []
    for line in child.stdout:
        reported.append(int(line))
        if len(reported) >= 300:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = Store.open(path)
    for i in reported:
        assert store.get_by_id(i.to_bytes(32, "big")) is not None, i
    assert store.counters()["accepted:embedding"] >= len(reported)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
