#!/usr/bin/env bash
# Install the app and the test tools (pytest, Playwright, Debian's chromium), then run the whole suite.
. "$(dirname "$0")/setup.sh" --dev
exec python -m pytest -q "$@"
