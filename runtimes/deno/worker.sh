#!/bin/sh
# Starts the Deno worker (worker.js) for the runtime supervisor:
#   python3 .../python/server.py --language deno -- sh .../deno/worker.sh   (R W appended)
# Run in the code directory (the container's working directory).
#
# `deno eval` rather than `deno run worker.js`: Deno looks for deno.json,
# deno.jsonc, package.json and deno.lock from the main module's directory, and
# eval's main module lives in the current directory, so the function's import
# map and node_modules apply to it (worker.js is outside the code directory).
#
# DENO_DIR: the build (build.sh) caches remote modules (https:, jsr:) and npm
# packages in <code>/.deno, which is read-only at run time. Deno still writes
# its transpile cache and databases there, and retries failed cache writes with
# a back-off (about 150 ms for every TypeScript module), so the worker gets a
# DENO_DIR of its own in $TMPDIR whose remote/ and npm/ are links to the
# build's (worker.js removes it when its request pipe ends; a worker that is
# killed leaves it in the container's /tmp). Without <code>/.deno, Deno's
# default cache ($HOME/.cache/deno) is used. A DENO_DIR already set is kept.
set -eu

case $0 in
  */*) here=${0%/*} ;;
  *) here=. ;;
esac
case $here in
  /*) ;;
  *) here=$PWD/$here ;;
esac

if [ -z "${DENO_DIR:-}" ] && [ -d .deno ]; then
  if DENO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/deno-dir.XXXXXX" 2>/dev/null); then
    for part in remote npm; do
      if [ -d ".deno/$part" ]; then
        ln -s "$PWD/.deno/$part" "$DENO_DIR/$part"
      fi
    done
    FUNCTIONS_DENO_OWN_DIR=$DENO_DIR
    export FUNCTIONS_DENO_OWN_DIR
  else
    DENO_DIR=$PWD/.deno  # no writable $TMPDIR: the build's cache as it is
  fi
  export DENO_DIR
fi

# A node_modules that `deno install` made (it has node_modules/.deno) is used
# as it is: with "nodeModulesDir": "auto" Deno would rewrite its setup cache
# at every start (read-only: a back-off again).
if [ -d node_modules/.deno ]; then
  set -- --node-modules-dir=manual --ext=js "import \"$here/worker.js\";" "$@"
else
  set -- --ext=js "import \"$here/worker.js\";" "$@"
fi

DENO_NO_UPDATE_CHECK=1
DENO_NO_PROMPT=1
export DENO_NO_UPDATE_CHECK DENO_NO_PROMPT
exec deno eval "$@"
