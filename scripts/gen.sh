#!/usr/bin/env bash
# Generate Python stubs (build/gen) and Envoy's descriptor set (build/functions.pb)
# from proto/. Generated code is never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
site=$("$PYTHON" -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')
wkt=$("$PYTHON" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
rm -rf build/gen build/third_party
mkdir -p build/gen build/third_party/google/api
# googleapis imports for buf lint (the BSR is out of reach here)
cp "$site"/google/api/{annotations,http,httpbody}.proto build/third_party/google/api/
"$PYTHON" -m grpc_tools.protoc -Iproto -I"$site" -I"$wkt" \
  --python_out=build/gen --pyi_out=build/gen --grpc_python_out=build/gen \
  --include_imports --include_source_info --descriptor_set_out=build/functions.pb \
  proto/functions/v1/*.proto
touch build/gen/functions/__init__.py build/gen/functions/v1/__init__.py
# Make `functions.v1` importable from the virtualenv.
purelib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(pwd)/build/gen" > "$purelib/functions-service-generated.pth"
echo "generated build/gen and build/functions.pb"
# The REST API as OpenAPI 3 (served by Envoy at /v1/openapi.json).
"$PYTHON" scripts/openapi.py build/functions.pb build/openapi.json
