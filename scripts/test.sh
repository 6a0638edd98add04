#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, then the default test suite (fast; slow checks are
# behind the `slow` marker: `bash scripts/test.sh -m slow` runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check edgecompile bench tests  # lint first: pyflakes/bugbear findings fail the run
exec .venv/bin/python -m pytest -n 2 "$@"
