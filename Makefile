# make up    set everything up, run the service (gRPC server + Envoy) in the foreground
# make test  the whole test suite, starting what it needs (dockerd, PostgreSQL)
# make runtimes  build every runtime image ahead of time (FUNCTIONS_RUNTIMES=all)
# Each step is skipped when its inputs have not changed.

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/node_modules/.installed
GEN_STAMP  := build/.generated
PROTOS := $(wildcard proto/functions/v1/*.proto)

.PHONY: up test deps gen lint clean runtimes

up: deps gen
	scripts/docker.sh
	$(PYTHON) -m server up

runtimes: deps
	scripts/docker.sh
	$(PYTHON) -m server runtimes --all

test: deps gen $(NODE_STAMP)
	scripts/test.sh

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/system-deps.sh
	scripts/system-deps.sh
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(NODE_STAMP): tests/package.json
	scripts/system-deps.sh node
	cd tests && npm install --no-audit --no-fund --silent
	touch $@

gen: $(GEN_STAMP)

# The OpenAPI document also reads the servicers' success codes.
$(GEN_STAMP): $(STAMP) $(PROTOS) scripts/gen.sh scripts/openapi.py $(wildcard server/api/*.py)
	scripts/gen.sh $(PYTHON)
	touch $@

lint: $(GEN_STAMP) $(NODE_STAMP)
	tests/node_modules/.bin/buf lint

clean:
	rm -rf build $(VENV) tests/node_modules
