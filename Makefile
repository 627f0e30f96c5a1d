# Two commands for a fresh machine (see README):
#   make demo   set up .venv and run the end-to-end demo on the embedded world
#   make test   set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test typecheck lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch first, pinned, so pip takes the local CPU build and never a CUDA one
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/terracube demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory typecheck
	bash .ci/pytest.sh

# mypy checks the installed names (terracube.catalog, ...); the four stage folders sit at
# the repo top, so a throwaway folder of links gives mypy that layout.
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/terracube
	for d in catalog pipeline model workflows; do ln -s ../../$$d .typecheck/terracube/$$d; done
	touch .typecheck/terracube/__init__.py
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p terracube

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis .typecheck
