# edgefleet: two commands do all the set-up on a fresh machine.
#   make demo   runs the main job end to end on the embedded defaults
#   make test   lint, type-check and the whole test suite
#   make soak   the crash and fault-storm tests at soak size (minutes; not part of make test)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := packer genisoimage xorriso cloud-image-utils postgresql faketime chromium prometheus

export PREFECT_HOME ?= $(CURDIR)/.prefect
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export CHECKPOINT_DISABLE := 1
# Prefect's embedded server gives up after 20 s by default; a fresh one takes 20-35 s on 2 loaded cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export EDGEFLEET_CLOUDINIT_ROOT := $(CURDIR)/.cache/cloud-init
export EDGEFLEET_SUSHY_VENV := $(CURDIR)/.cache/sushy-venv

.PHONY: setup debs test lint typecheck pytest demo bench soak clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing edgefleet and its dependencies into $(VENV) (log: $(VENV)/pip.log)"
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(PY) -m pip install -q -e '.[dev]' >> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@$(PY) -c "import edgefleet, prefect, pycdlib, hcl2, ansible_runner"
	@touch $@

debs:
	@scripts/ensure-debs $(DEB_PACKAGES)

.cache/cloud-init/.done:
	scripts/ensure-cloud-init .cache/cloud-init

.cache/sushy-venv/bin/sushy-emulator:
	scripts/ensure-sushy .cache/sushy-venv

setup: $(VENV)/.installed debs .cache/cloud-init/.done .cache/sushy-venv/bin/sushy-emulator

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check edgefleet tests bench $(wildcard flows/*.py)
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy edgefleet bench

# The second run moves the clock two years ahead (faketime) for every test that mints or checks
# certificates, tokens or TLS handshakes (marker `clock`): nothing may depend on today's date.
# The trains-on-Prefect tests run in a pytest process of their own: they drive the Prefect client in
# process against servers of their own, and Prefect reads its settings once per process (an earlier
# test's server would be the one it talks to).
pytest: setup
	$(VENV)/bin/pytest -q tests --ignore=tests/integration/test_train_prefect.py
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/integration/test_train_prefect.py
	@echo "--- again, two years from now: the tests marked clock (certificates, tokens, TLS)"
	faketime -f '+730d' $(VENV)/bin/pytest -q -p no:cacheprovider -m clock tests

test: setup lint typecheck pytest

demo: setup
	$(PY) -m edgefleet.demo

bench: setup
	$(PY) -m bench

# The long runs of the crash and fault tests (EDGEFLEET_SOAK=1: 1,000 stores, 50 kill -9s, ...); not in `make test`.
soak: setup
	EDGEFLEET_SOAK=1 $(VENV)/bin/pytest -q -s tests/contract/test_rollout_crash.py tests/contract/test_fault_storm.py

clean:
	rm -rf out .prefect .edgefleet .pytest_cache .mypy_cache .ruff_cache
