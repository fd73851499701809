# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml runtime/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, pinned, so nothing later can pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# A venv from before the split has edgediff owning the edgediff-run script; reinstalling it
	# after the runtime would delete that script, so it goes first.
	$(PY) -m pip uninstall -q -y edgediff 2>/dev/null || true
	# The runtime distribution (not on PyPI) before the main package, which requires it.
	$(PY) -m pip install -q -e "./runtime[prompts]"
	$(PY) -m pip install -q -e ".[dev,pipelines]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgediff demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
