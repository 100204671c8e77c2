#!/bin/sh
# Builds a Deno deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory), then:
#   - with a deno.json, deno.jsonc or package.json: `deno install` installs
#     what they declare (jsr:, npm:, https: imports; package.json dependencies,
#     local ones too, e.g. "greeter": "file:./packages/greeter", go to
#     node_modules; deno.lock is written or checked as usual);
#   - `deno cache` caches the entrypoint's module graph (https: URLs in the
#     code, say; `deno install --entrypoint` would do the same but refuses
#     file: npm packages). It fails where loading the function would (a
#     dependency that cannot be fetched: `deno install` leaves out jsr:
#     packages it cannot fetch without failing; a syntax error), so the build
#     fails then, with Deno's message.
# Downloads land in $FUNCTIONS_CODE/.deno (DENO_DIR); only its remote/ and
# npm/ are kept, which the worker (worker.sh) reads at run time. Uses only
# deno and tar, so any image with Deno 2 works.
set -eu

cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

DENO_DIR="$FUNCTIONS_CODE/.deno"
DENO_NO_UPDATE_CHECK=1
DENO_NO_PROMPT=1
NO_COLOR=1
export DENO_DIR DENO_NO_UPDATE_CHECK DENO_NO_PROMPT NO_COLOR
deno --version | head -n 1

if [ "${FUNCTIONS_BUILD_OFFLINE:-}" = 1 ]; then
  # Nothing to set: without a network Deno's downloads fail at once (no
  # retries), so only what is local (file: packages, workspace members,
  # node_modules, vendor/) can be installed.
  echo "No network for this build: only local dependencies can be installed"
fi

if [ -f deno.json ] || [ -f deno.jsonc ] || [ -f package.json ]; then
  echo "Installing dependencies: deno install"
  deno install --allow-import
fi

entry="${FUNCTIONS_ENTRYPOINT:-}"
if [ -n "$entry" ] && [ -f "$entry" ]; then
  echo "Caching the imports of $entry: deno cache $entry"
  if ! deno cache --allow-import "./$entry"; then
    echo "error: $entry or one of its imports cannot be loaded (see above)" >&2
    exit 1
  fi
fi

# Keep the module caches only: the rest of DENO_DIR (transpiled code, SQLite
# caches) is rebuilt at run time in the worker's own DENO_DIR. npm packages
# that `deno install` put in node_modules (it then has node_modules/.deno) are
# read from there at run time (worker.sh), so their copies in .deno/npm go.
if [ -d .deno ]; then
  for path in .deno/* .deno/.[!.]*; do
    case "${path##*/}" in
      remote | "*" | ".[!.]*") ;;
      npm) if [ -d node_modules/.deno ]; then rm -rf "$path"; fi ;;
      *) rm -rf "$path" ;;
    esac
  done
  rmdir .deno/remote .deno/npm .deno 2>/dev/null || true  # those that are empty
fi
echo "Build done"
