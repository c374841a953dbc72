# Two commands (README): `make run` installs and runs the main job, `make test` installs
# and runs the tests. Both create ./.venv; torch is pinned to the 2.13.0 CPU build first so
# nothing pulls a multi-GB CUDA build onto a CPU machine.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-slow run baselines clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[data,dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS)

# The main job: build the QM9 cache (with its conversion report) and the RDKit baselines table.
run: install
	$(PY) -m molconf.data.prepare qm9 --report-dir datasets/qm9
	$(VENV)/bin/molconf baselines --split test --out benchmarks/results

clean:
	rm -rf $(VENV) runs
