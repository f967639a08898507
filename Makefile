# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use (pip takes torch 2.14.1 / torchvision 0.29.1 from local disk
# where this machine has them; elsewhere pip resolves the range in pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean stack stack-down stack-status

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cvflow demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --timeout 900 -q

# The team stack without Docker (deploy/stack/stack.py): PostgreSQL, a Prefect server and an MLflow
# server on it, the deployments of deploy/prefect.yaml and a worker, all on 127.0.0.1. Settings
# (ports, passwords) from the environment or deploy/.env; files in .cvflow/stack. Needs Debian's
# postgresql package (apt-get install postgresql).
stack: $(STAMP)
	$(BIN)/python deploy/stack/stack.py up

stack-status: $(STAMP)
	$(BIN)/python deploy/stack/stack.py status

stack-down:
	$(BIN)/python deploy/stack/stack.py down

clean:
	rm -rf $(VENV) .cvflow .pytest_cache
