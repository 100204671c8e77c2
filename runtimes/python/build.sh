#!/bin/sh
# Builds a Python deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory) and
# installs requirements.txt into $FUNCTIONS_CODE/.deps, which the runtime puts
# on sys.path. Uses only python3 and tar, so any image with Python works.
set -eu

cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

if [ -f requirements.txt ]; then
  echo "Installing requirements.txt"
  # Without network the index cannot answer: fail at once instead of retrying.
  if [ "${FUNCTIONS_BUILD_OFFLINE:-}" = 1 ]; then
    export PIP_RETRIES="${PIP_RETRIES:-0}"
  fi
  # --target leaves the interpreter's own site-packages alone, so Debian's
  # PEP 668 "externally managed" guard does not apply; the variable covers
  # pips that check anyway. Run from the code dir: relative paths such as
  # ./wheels/x.whl in requirements.txt resolve against the code.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install \
    --no-cache-dir --disable-pip-version-check --no-input --no-warn-script-location \
    --target "$FUNCTIONS_CODE/.deps" -r requirements.txt
fi
