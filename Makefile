# make run   : set up (venv, package, embedded model and corpus) and run the main job
# make test  : set up and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -c "from tyrjax.checkpoints.assets import default_model_dir, shakespeare_dir; default_model_dir(); shakespeare_dir()"
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/tyrjax prune --method tyr --sparsity 0.5 --preset quick --out runs/default

test: setup
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs
