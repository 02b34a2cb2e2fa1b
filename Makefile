# imagegw: `make run` starts the whole gateway locally, `make test` installs and passes the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Lambda runtime is python3.12: the venv uses it too, and `sam build` finds it through .venv/bin.
PYTHON_VERSION := 3.12
PYTHON ?= $(shell for p in python$(PYTHON_VERSION) $$HOME/.pyenv/versions/$(PYTHON_VERSION)*/bin/python$(PYTHON_VERSION) /usr/local/bin/python$(PYTHON_VERSION) /usr/bin/python$(PYTHON_VERSION); do \
             $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# No region is forced on the targets that talk to AWS (deploy, providers, key): they use yours (AWS_REGION /
# AWS_DEFAULT_REGION, your profile, or the region `make deploy GUIDED=1` saved in samconfig.toml). The local targets
# (moto, the local stack, cfn-lint, sam validate) need one and set LOCAL_REGION for themselves only, below.
LOCAL_REGION := us-east-1
export PATH := $(abspath $(BIN)):$(PATH)
export SAM_CLI_TELEMETRY := 0

STACK_NAME ?= imagegw
# `make providers` uploads only a file you name (PROVIDERS=...); check-providers checks the local one by default.
PROVIDERS ?=
PROVIDERS_PARAM ?= /imagegw/providers

.PHONY: help venv install run test unit integration lint bench build deploy key redrive providers check-providers events simulators clean require-providers

LOCAL_TARGETS := run simulators test unit integration lint bench events
$(LOCAL_TARGETS): export AWS_DEFAULT_REGION := $(LOCAL_REGION)
$(LOCAL_TARGETS): export AWS_REGION := $(LOCAL_REGION)

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt layers/imagegw/requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "python$(PYTHON_VERSION) not found: install it (e.g. pyenv install $(PYTHON_VERSION))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The layer's package, importable in the venv as it is inside Lambda (scripts, the local stack).
	echo $(abspath layers/imagegw) > $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/imagegw-layer.pth
	# The `imagegw` command (cli/imagegw_cli, the project's console script), editable, into .venv/bin.
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

venv install: $(STAMP) ## create .venv and install everything

run: $(STAMP) ## start the gateway locally (API on :3000, embedded AWS on :4566)
	$(BIN)/python -m local

simulators: $(STAMP) ## every upstream simulator on :4701-4710 (then PROVIDERS_FILE=config/providers.simulators.json make run)
	$(BIN)/python -m tests.simulators

test: $(STAMP) lint ## install, lint, run every test
	$(BIN)/python -m pytest

unit: $(STAMP) ## unit tests only
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) ## integration tests only (they start the local stack)
	$(BIN)/python -m pytest tests/integration

BENCH ?= bench
bench: $(STAMP) ## benchmarks (BENCH=bench/<file> for one): a 10,000-line batch job (about 30 min), async poll lag
	$(BIN)/python -m pytest $(BENCH) -q -s -p no:cacheprovider

# The Python that ships or runs: the layer package, the handlers, the local stack, the CLI, the scripts.
LINT_PATHS := layers/imagegw/imagegw functions local cli/imagegw_cli scripts
lint: $(STAMP) ## ruff and mypy on the Python code, then cfn-lint (with the serverless rules) and sam validate --lint
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)
	$(BIN)/cfn-lint --append-rules cfn_lint_serverless.rules -- template.yaml
	$(BIN)/sam validate --lint --template template.yaml

build: $(STAMP) ## sam build (needs python3.12, found in .venv/bin)
	$(BIN)/sam build --template template.yaml

deploy: build ## sam deploy with samconfig.toml (GUIDED=1 asks and saves the answers)
	$(BIN)/sam deploy $(if $(GUIDED),--guided)

providers: require-providers $(STAMP) ## check PROVIDERS=<file> (JSON or YAML) and upload it to the SSM parameter the stack reads
	$(BIN)/python -m scripts.put_providers $(PROVIDERS) $(PROVIDERS_PARAM)

# Before anything else (even the venv): without PROVIDERS= there is nothing of yours to upload, and the local
# placeholder config must never reach a deployed stack.
require-providers:
	@test -n "$(strip $(PROVIDERS))" || { echo "make providers: name your provider config, e.g. make providers PROVIDERS=my-providers.json (nothing was uploaded)" >&2; exit 2; }

check-providers: $(STAMP) ## check PROVIDERS on its own (default config/providers.local.json): every problem with its JSON path
	$(BIN)/python -m scripts.check_providers $(or $(strip $(PROVIDERS)),config/providers.local.json)

redrive: $(STAMP) ## send the dead-letter queue's events and invocations back where they were going (DRY_RUN=1: only say)
	$(BIN)/python -m scripts.redrive --stack $(STACK_NAME) $(if $(DRY_RUN),--dry-run)

key: $(STAMP) ## create an API key in the deployed stack (printed once)
	$(BIN)/python -m scripts.make_key --stack $(STACK_NAME) --name "$(or $(NAME),default)"

clean: ## remove build outputs
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache

events: $(STAMP) ## regenerate events/ (API and schedule samples via sam local generate-event)
	$(BIN)/python -m scripts.generate_events
