"""Data shipped with dlnet: the default corpus (corpus.txt) and labelled sets (labelled/).

Provenance and licences: CORPUS.md in this folder.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

DATA_DIR = Path(__file__).resolve().parent


def shipped_path(name: str) -> Path:
    """The path of the shipped file ``name`` (e.g. ``corpus.txt``, ``labelled/x.tsv``).

    ``name`` is a relative POSIX path inside this package; absolute paths and ``..`` are refused
    (ValueError), so a network config's ``builtin:`` name cannot point outside it. The file need
    not exist (the caller reports a missing file when it reads it).
    """
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise ValueError(f"builtin:{name}: not a file name inside the dlnet.data package")
    return DATA_DIR.joinpath(*pure.parts)
