# The README's two commands are `make study` and `make test`; both set up .venv first.
PYTHON ?= python3
PRESET ?= cpu
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup study studies test lint lab rehearse lock

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name studylib --display-name "studylib (.venv)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

study: setup  ## the default study: MAE->WSP vs WSP, then linear probes (PRESET=cpu|gpu|paper|smoke)
	$(VENV)/bin/studylib study --preset $(PRESET)

studies: setup  ## every study notebook in batch with papermill (executed copies in output/notebooks/PRESET/)
	$(VENV)/bin/studylib notebooks --preset $(PRESET)

lint: setup
	$(VENV)/bin/ruff check studylib tests benchmarks notebooks
	$(VENV)/bin/ruff format --check --exclude "*.ipynb" studylib tests benchmarks

test: lint  ## every test, on synthetic data
	$(VENV)/bin/python -m pytest -q

lab: setup  ## JupyterLab on the notebooks (as root too, as in a container)
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

rehearse: setup  ## the GPU scripts (benchmarks/gpu_check.sh, gpu_studies.sh) at toy size on the CPU, 8.5 min
	$(VENV)/bin/python -m pytest -q -m rehearsal tests/test_gpu_rehearsal.py

lock: setup  ## requirements.lock: every package version of .venv (the one behind the committed results)
	{ echo "# pip freeze of the .venv behind results/ (Python $$($(VENV)/bin/python -c 'import platform; print(platform.python_version())')):"; \
	  echo "# $(VENV)/bin/pip install -r requirements.lock && $(VENV)/bin/pip install --no-deps -e ."; \
	  $(VENV)/bin/pip freeze --exclude-editable --disable-pip-version-check; } > requirements.lock
