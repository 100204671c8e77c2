#!/bin/sh
# Builds a PHP deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory) and,
# when there is a composer.json, installs its production dependencies into
# vendor/ there; the worker requires vendor/autoload.php before the
# entrypoint. Uses only php, composer and tar, so any image with them works.
set -eu

cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

if [ -f composer.json ]; then
  echo "Installing composer.json dependencies"
  if ! command -v composer >/dev/null 2>&1; then
    echo "composer.json found, but composer is not installed in this image" >&2
    exit 1
  fi
  # Composer needs a home for its config and cache; the build's home may be
  # missing or read-only, and nothing outside the code dir is kept anyway.
  tmp="${TMPDIR:-/tmp}"
  export COMPOSER_HOME="${COMPOSER_HOME:-$tmp/composer-home}"
  export COMPOSER_CACHE_DIR="${COMPOSER_CACHE_DIR:-$tmp/composer-cache}"
  export COMPOSER_ALLOW_SUPERUSER=1 COMPOSER_NO_INTERACTION=1 COMPOSER_NO_AUDIT=1
  # Without network the repositories cannot answer: fail at once instead of
  # retrying (local "path" repositories still install).
  if [ "${FUNCTIONS_BUILD_OFFLINE:-}" = 1 ]; then
    export COMPOSER_DISABLE_NETWORK=1
  fi
  # As the open-runtimes PHP builds did: no dev packages, no scripts, an
  # optimized autoloader. Run from the code dir: relative "path" repositories
  # (e.g. packages/greeter) resolve against the code.
  composer install --no-dev --no-interaction --no-progress --no-scripts \
    --prefer-dist --optimize-autoloader
fi
