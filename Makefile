# The two set-up commands of the README: `make demo` and `make test`.
# Both create or reuse .venv at the repo root; torch is installed first from the CPU wheel so
# that no multi-GB CUDA build is pulled in by the project's dependency range.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.saegov-installed

.PHONY: demo test install

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saegov demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)
