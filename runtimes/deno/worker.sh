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
#
# Late code: a warm pool starts the container (so this script and Deno) before
# the function's code is in the code directory (a mount over it, or files
# linked into it, before the `load` request). FUNCTIONS_DENO_SEEN tells
# worker.js which of the files above were here when Deno started; when a load
# finds others (or another directory), worker.js replaces its process (execve,
# same pid, same fds R and W) with this script again, started in the code
# directory, and hands it the load request in FUNCTIONS_DENO_PENDING: the new
# worker answers it. FUNCTIONS_DENO_DIR_SET: this script chose DENO_DIR (so the
# new run chooses again). Only shell built-ins here: nothing slows the start.
set -eu

case $0 in
  */*) here=${0%/*} ;;
  *) here=. ;;
esac
case $here in
  /*) ;;
  *) here=$PWD/$here ;;
esac

seen=
for name in deno.json deno.jsonc package.json deno.lock node_modules node_modules/.deno .deno; do
  if [ -e "$name" ]; then
    seen="$seen $name"
  fi
done
FUNCTIONS_DENO_SEEN="$seen "
export FUNCTIONS_DENO_SEEN

if [ -z "${DENO_DIR:-}" ] && [ -d .deno ]; then
  FUNCTIONS_DENO_DIR_SET=1
  export FUNCTIONS_DENO_DIR_SET
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
