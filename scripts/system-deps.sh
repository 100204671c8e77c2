#!/usr/bin/env bash
# Debian packages the project needs, installed only when missing (root only).
#   system-deps.sh        python3 + venv
#   system-deps.sh node   node + npm (tests: buf, node-appwrite)
set -euo pipefail
need=()
case "${1:-python}" in
  python) python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3 python3-venv python3-pip) ;;
  node) command -v npm >/dev/null || need+=(nodejs npm) ;;
  docker) command -v dockerd >/dev/null || need+=(docker.io); command -v debootstrap >/dev/null || need+=(debootstrap) ;;
  postgres) command -v pg_ctlcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql) ;;
esac
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (install them as root: apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${need[@]}" >/dev/null
