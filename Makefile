# ec2hub: the two commands a newcomer needs are `make local` and `make test`.
# Everything installs into the repository (.venv, node_modules, .cache); Debian packages via apt-get.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := .cache/stamps

# The CDK CLI and jsii run on the Node from node_modules (a supported release), never the system's.
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export JSII_RUNTIME_PACKAGE_CACHE_ROOT := $(CURDIR)/.cache/jsii
export CDK_HOME := $(CURDIR)/.cache/cdk
export CDK_DISABLE_VERSION_CHECK := 1
export CDK_DISABLE_CLI_TELEMETRY := true
export MOTO_EC2_LOAD_DEFAULT_AMIS := false
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: help deps test lint synth local local-down status bench clean

help:
	@echo "make local   start the local sandbox (root; Ctrl-C stops it)"
	@echo "make test    install everything and run the whole test suite"
	@echo "make synth   synthesize the CloudFormation template offline into cdk.out/"

$(STAMP)/system: scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	@mkdir -p $(STAMP) && touch $@

$(STAMP)/python: requirements.txt requirements-dev.txt spawner/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e spawner
	@mkdir -p $(STAMP) && touch $@

# checkov pins its own boto3 (conflicting with ours): it lives in a venv of its own.
CHECKOV_VENV := .cache/checkov
$(STAMP)/checkov: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	@mkdir -p $(STAMP) && touch $@

$(STAMP)/node: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@node --version | grep -q '^v22\.' || { echo "node_modules/.bin/node is not Node 22"; exit 1; }
	@mkdir -p $(STAMP) && touch $@

deps: $(STAMP)/system $(STAMP)/python $(STAMP)/checkov $(STAMP)/node

test: deps
	$(PY) -m pytest -n 2

lint: deps
	$(PY) -m ruff check .

# An offline look at the template: ec2hub.yaml with plain HTTP allowed (the file has no
# certificate, and refuses plain HTTP unless asked); SYNTH_CONTEXT="-c key=value ..." overrides.
SYNTH_CONTEXT ?= -c allow_http=true

synth: deps
	cdk synth --quiet $(SYNTH_CONTEXT)

local: deps
	$(PY) -m sandbox up

local-down: deps
	$(PY) -m sandbox down

status: deps
	$(PY) -m sandbox status

bench: deps
	$(PY) benchmarks/poll_cost.py
	$(PY) benchmarks/spawn_burst.py
	$(PY) benchmarks/sandbox_spawn.py

clean:
	rm -rf cdk.out .cache .pytest_cache
