#!/usr/bin/env bash
# Install, then start the app on the embedded model at http://127.0.0.1:7860
. "$(dirname "$0")/setup.sh"
exec python app.py "$@"
