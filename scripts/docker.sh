#!/usr/bin/env bash
# Make sure a Docker engine answers. Idempotent; returns at once when one runs.
# As root it installs Debian's docker.io and debootstrap (runtime images are
# built with it) when absent and starts dockerd detached, logging to
# $FUNCTIONS_DOCKERD_LOG (default /tmp/dockerd.log). Waits at most
# $FUNCTIONS_DOCKERD_WAIT seconds (default 60) for it to answer.
set -euo pipefail
cd "$(dirname "$0")/.."
log=${FUNCTIONS_DOCKERD_LOG:-/tmp/dockerd.log}
wait_s=${FUNCTIONS_DOCKERD_WAIT:-60}

engine_up() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

if [ "$(id -u)" = 0 ]; then
  scripts/system-deps.sh docker  # only checks when both are installed
fi
engine_up && exit 0

if [ "$(id -u)" != 0 ]; then
  if ! command -v docker >/dev/null; then
    echo "docker.sh: no docker CLI and not root: install docker.io (apt-get install docker.io debootstrap) as root" >&2
  else
    echo "docker.sh: no Docker engine answers ($(docker info 2>&1 >/dev/null | tail -n 1))." >&2
    echo "docker.sh: start dockerd as root (or run this script as root), or join the docker group for socket access." >&2
  fi
  exit 1
fi

# A dockerd that is still starting is waited for, not started twice.
if ! pgrep -x dockerd >/dev/null; then
  echo "docker.sh: starting dockerd (log: $log)" >&2
  # Own session, stdin closed, output to the log: it outlives this script and its terminal.
  ( setsid dockerd > "$log" 2>&1 < /dev/null & )
fi

started=$SECONDS
until engine_up; do
  if [ $((SECONDS - started)) -ge "$wait_s" ]; then
    echo "docker.sh: dockerd did not answer within ${wait_s} s; last lines of $log:" >&2
    tail -n 20 "$log" >&2 2>/dev/null || true
    exit 1
  fi
  # After a grace period: right after the fork the child is not yet named dockerd.
  if [ $((SECONDS - started)) -ge 2 ] && ! pgrep -x dockerd >/dev/null; then
    echo "docker.sh: dockerd exited; last lines of $log:" >&2
    tail -n 20 "$log" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
echo "docker.sh: Docker engine ready" >&2
