# Sourced by scripts/demo and scripts/test: make .venv if needed and install hybridnas into it.
# torch comes first and pinned, so pip never resolves a newer (CUDA-sized) build for us.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HYBRIDNAS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  echo "installing torch==2.13.0" >&2
  pip install -q "torch==2.13.0"
fi
# Reinstall only when the dependency list changed.
STAMP="$VENV/.hybridnas-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! python -c "import hybridnas" 2>/dev/null; then
  echo "installing hybridnas (editable) and its dependencies" >&2
  pip install -q -e "$ROOT[test]"
  echo "$WANT" > "$STAMP"
fi
cd "$ROOT"
