# lasnn: the two commands of the README (`make demo`, `make test`) and what they need.
# `make setup` is idempotent: it rebuilds .venv only when pyproject.toml or this Makefile changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lasnn-setup-done
ARCH := $(shell uname -m)

# torchvision from PyPI only imports beside the torch build it was made for; these pairs install from
# this machine's disk (x86_64: CUDA build that also runs on CPU; aarch64: CPU build).
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
# lava-nc 0.10.0 declares Python <3.11; its dependencies are pinned in pyproject.toml (so they resolve to
# wheels), then lava-nc itself goes in without its Python check. lasnn.sims patches its one 3.11+
# incompatibility at import time (sims/lava_compat.py).
LAVA_PIN := lava-nc==0.10.0

.PHONY: setup demo test lint bench clean readers netx
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q $(TORCH_PINS)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[test]"
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --ignore-requires-python $(LAVA_PIN)
	$(BIN)/python -c "import lasnn.distill, lasnn.export, lasnn.hardware, lasnn.sims; from lava.proc.lif.process import LIF"
	@touch $(STAMP)

# side environments with snnTorch and sinabs's own NIR readers for tests/test_readers.py (pinned;
# they reuse the main venv's torch, see the script)
readers: setup
	bash scripts/reader_envs.sh

# lava-dl 0.6.0 (netx) without its dependencies, for tests/test_netx_export.py (pinned; see the script)
netx: setup
	bash scripts/netx_env.sh

demo: setup
	$(BIN)/lasnn demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf runs build *.egg-info
