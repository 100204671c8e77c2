#!/bin/sh
# Builds a Node.js deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory) and,
# when there is a package.json, installs its production dependencies into
# node_modules. Uses only node, npm and tar, so any image with Node works.
set -eu

cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

if [ -f package.json ]; then
  echo "Installing package.json dependencies"
  export npm_config_update_notifier=false
  # Without network the registry cannot answer: fail at once instead of
  # retrying for minutes.
  if [ "${FUNCTIONS_BUILD_OFFLINE:-}" = 1 ]; then
    export npm_config_fetch_retries="${npm_config_fetch_retries:-0}"
  fi
  npm install --omit=dev --no-audit --no-fund
fi
