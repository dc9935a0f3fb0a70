# Two entry points for a fresh machine (both create .venv and install the pinned set):
#   make run    - the full pipeline (SOURCE=official by default; SOURCE=../shared/pets-sample for the local sample;
#                 ARGS="--set model.encoder_weights=FILE" for the pretrained encoder's weights without internet)
#   make test   - the whole test suite, slow tests included (what CI runs)
PYTHON ?= python3.11
VENV ?= .venv
SOURCE ?= official
PRESET ?= cpu-quick
WORK ?= segpipe-work
ARGS ?=
# Test workers: one more than the 2 cores CI has. Many slow tests wait on a subprocess, a server or a terminal,
# and a third worker runs tests in those waits (tests/conftest.py, LONGEST_FIRST, says how files are handed out).
WORKERS ?= 3
BIN := $(VENV)/bin

.PHONY: run test test-fast install clean

$(BIN)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/segpipe run --source $(SOURCE) --preset $(PRESET) --work-dir $(WORK) $(ARGS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -m "slow or not slow" -q -n $(WORKERS) --dist loadfile

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
