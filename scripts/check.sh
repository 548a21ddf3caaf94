#!/usr/bin/env bash
# Lint and type-check the tree. protocol/, node/ and data/ install as dlnet.protocol,
# dlnet.node and dlnet.data (see pyproject.toml), so mypy reads them through a
# temporary folder of symlinks that spells out that package layout.
set -euo pipefail
cd "$(dirname "$0")/.."
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/dlnet"
for d in protocol node data; do ln -s "$PWD/$d" "$shim/dlnet/$d"; done
ruff check .
ruff format --check .
MYPYPATH="$shim" mypy -p dlnet.protocol -p dlnet.node -p dlnet.data
