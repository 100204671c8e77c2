#!/bin/sh
# Builds a Ruby deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory) and,
# when there is a Gemfile (or gems.rb), installs the bundle into
# $FUNCTIONS_CODE/vendor/bundle with Bundler; .bundle/config records that, so
# the worker's Bundler.setup finds the gems at run time (the Gemfile.lock is
# written here: the code is read-only when it runs). Uses only ruby, bundler
# and tar, so any image with Ruby and Bundler works.
set -eu

cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

if [ -f Gemfile ] || [ -f gems.rb ]; then
  echo "Installing the Gemfile's gems into vendor/bundle"
  # Bundler's own files (user config, compact index cache) go to scratch
  # space, never to HOME or outside the output; the app's settings are in
  # ./.bundle/config, which is kept.
  export BUNDLE_USER_HOME="${TMPDIR:-/tmp}/bundler-home"
  export BUNDLE_APP_CONFIG="$FUNCTIONS_CODE/.bundle"
  export BUNDLE_SILENCE_ROOT_WARNING=1
  export BUNDLE_IGNORE_MESSAGES=1
  # Run with the image's Bundler even when a Gemfile.lock was made by
  # another version (no fetching and restarting into that one).
  version="$(bundle --version | sed -n 's/^\(Bundler version \)\{0,1\}\([0-9][0-9.a-z]*\)$/\2/p')"
  if [ -n "$version" ]; then
    export BUNDLER_VERSION="$version"
  fi
  bundle config set --local path vendor/bundle
  bundle config set --local without "development:test"
  if [ "${FUNCTIONS_BUILD_OFFLINE:-}" = 1 ]; then
    # No network: only gems at hand (path: gems, vendor/cache/*.gem), and
    # fail at once instead of retrying.
    bundle install --local
  else
    bundle install --retry 1
  fi
  # The bundle as installed is the one that runs: never re-resolved at run time.
  bundle config set --local frozen true
  # Downloaded .gem archives are not needed once installed.
  rm -f vendor/bundle/ruby/*/cache/*.gem
fi
