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

# The tests plus the long checks marked slow (tests/test_slow.py: the full QM9 conversion and a
# short training run that must learn; several minutes each on 2 cores).
test-slow: install
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS)

# The main job (a few minutes on 2 cores): predict conformers for the shipped example molecules
# (runs/example/predicted.sdf), then molconf vs RDKit ETKDG / ETKDG + MMFF on the shipped reference
# samples of the QM9 and moses_xtb test splits. Writes only under runs/ (gitignored).
run: install
	$(PY) benchmarks/first_run.py --out runs/example

# The full-split RDKit baselines (~25 min on 2 cores): builds the QM9 cache (with its conversion
# report, rewriting datasets/qm9/conversion_report.json) and rewrites benchmarks/results/qm9_test_rdkit.*
baselines: install
	$(PY) -m molconf.data.prepare qm9 --report-dir datasets/qm9
	$(VENV)/bin/molconf baselines --split test --out benchmarks/results

clean:
	rm -rf $(VENV) runs
