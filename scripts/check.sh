#!/usr/bin/env bash
# Lint and type-check the tree: the package lives in src/dlnet/, so plain tools need no setup.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
mypy --strict
