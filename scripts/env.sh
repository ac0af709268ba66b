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

# The report's tests render it in headless Chromium. Install it with the system's package manager
# where this user may (root, or passwordless sudo, with apt-get); elsewhere those tests say so in one
# line and are skipped (CI makes them required: .ci/run). Called by scripts/test; the demo needs no browser.
hybridnas_browser() {
  local name sudo="" log
  for name in chromium chromium-browser google-chrome; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  command -v apt-get >/dev/null 2>&1 || return 0
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || return 0
    sudo="sudo -n"
  fi
  echo "installing chromium (apt-get) for the report's browser tests" >&2
  log="$(mktemp)"
  # -o DPkg::Lock::Timeout: wait for another apt run rather than fail at once.
  apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends chromium >>"$log" 2>&1; }
  # Stale or missing package lists (a fresh container has none): update once, then try again.
  if ! apt_install && ! { $sudo apt-get update -q >>"$log" 2>&1 && apt_install; }; then
    echo "could not install chromium ($(grep -E '^E:' "$log" | tail -n 1 || true)); the report's browser tests will be skipped" >&2
  fi
  rm -f "$log"
}
cd "$ROOT"
