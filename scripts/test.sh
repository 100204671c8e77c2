#!/usr/bin/env bash
# The whole test suite (make test): starts what the tests need, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/docker.sh ]; then scripts/docker.sh; fi
FUNCTIONS_TEST_DATABASE_URL=$(scripts/postgres.sh)
export FUNCTIONS_TEST_DATABASE_URL
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest's 5 means "no tests collected": that is a failure here, not a pass.
exit $status
