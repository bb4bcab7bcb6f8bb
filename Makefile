# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# GPU users: `make CONSTRAINTS= test` keeps the torch you installed yourself.
CONSTRAINTS ?= -c constraints-cpu.txt

.PHONY: serve test lint setup clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/nanoserve serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Debian's Chromium for the workbook's browser tests (no-op when present).
BROWSER := /usr/bin/chromium

$(BROWSER):
	bash scripts/install_test_browser.sh

test: $(STAMP) $(BROWSER)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV)
