#!/bin/sh
# Builds a Bun deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory) and,
# when there is a package.json, installs its production dependencies into
# node_modules with `bun install`. Uses only bun and tar, so any image with
# Bun works. Bun's download cache is a temporary directory under /tmp (never
# kept, never shared between builds); everything kept is in $FUNCTIONS_CODE.
set -eu

cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

if [ -f package.json ]; then
  echo "Installing package.json dependencies ($(bun --version))"
  if [ -z "${HOME:-}" ] || [ ! -w "$HOME" ]; then
    export HOME=/tmp
  fi
  BUN_INSTALL_CACHE_DIR="$(mktemp -d /tmp/bun-install-cache.XXXXXX)"
  export BUN_INSTALL_CACHE_DIR
  trap 'rm -rf "$BUN_INSTALL_CACHE_DIR"' EXIT
  export DO_NOT_TRACK=1
  export BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
  # Without network the registry cannot answer: --offline fails at once (a
  # file: or link: dependency inside the code needs no network).
  offline=""
  if [ "${FUNCTIONS_BUILD_OFFLINE:-}" = 1 ]; then
    echo "FUNCTIONS_BUILD_OFFLINE=1: installing without network"
    offline="--offline"
  fi
  # --production: no devDependencies, and no lockfile written when there is
  # none (an existing bun.lock / package-lock.json pins the versions).
  # --no-env-file: a .env in the code is not loaded into the build.
  bun install --production --no-progress --no-env-file $offline
fi
