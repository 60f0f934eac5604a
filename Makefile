# featuniv: `make figures` regenerates every figure of a profile; `make test` runs all tests.
PROFILE ?= tiny
# overrides of single values, e.g. make figures SET="similarity.n_shuffles=100 layers.A=[1,2]"
SET ?=
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests never touch the network; `make figures PROFILE=pythia` needs the hub, so only the test and
# offline targets set HF_HUB_OFFLINE.
OFFLINE := HF_HUB_OFFLINE=1
export WANDB_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export PYTHONHASHSEED := 0

.PHONY: venv figures atlas models notebooks bench test test-unit test-chain test-nbval clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (featuniv)"
	touch $(STAMP)

## Run notebooks 01-08 on PROFILE (default tiny; pythia and gemma need the hub); executed copies go to build/PROFILE/.
figures: $(STAMP)
	$(PY) -m featlib.tools.chain --profile $(PROFILE) $(foreach s,$(SET),--set '$(s)')

## Notebook 08 on PROFILE: the atlas page in build/atlas/LABEL/ and, with Debian's chromium, its screenshot in figures/LABEL/.
atlas: $(STAMP)
	$(PY) -m featlib.tools.chain --profile $(PROFILE) $(foreach s,$(SET),--set '$(s)') --only 08
	$(PY) -m featlib.atlas --profile $(PROFILE) $(foreach s,$(SET),--set '$(s)')

## Retrain the tiny profile's language models and tokenizer (seeded; reports held-out loss).
models: $(STAMP)
	$(OFFLINE) $(PY) -m featlib.tools.lm --out models/tiny

# The committed notebooks are executed, and compared by nbval, on an empty cache: the same cells run
# (and print the same progress) every time.
NB_CACHE := $(CURDIR)/build/notebook-cache

## Re-execute the committed notebooks in place with their defaults (the tiny profile).
notebooks: $(STAMP)
	rm -rf $(NB_CACHE)
	$(OFFLINE) FEATUNIV_CACHE=$(NB_CACHE) $(PY) -m featlib.tools.chain --profile tiny --in-place

## Fast paths vs plain reference runs, measured in one process (a few minutes).
bench: $(STAMP)
	$(PY) -m featlib.tools.bench

test: test-unit test-chain test-nbval

test-unit: $(STAMP)
	$(OFFLINE) $(PY) -m pytest tests -q --ignore=tests/chain

## The whole chain on the smoke profile, through papermill.
test-chain: $(STAMP)
	$(OFFLINE) $(PY) -m pytest tests/chain -q -p no:cacheprovider

## The committed, executed notebooks re-run and compared with their stored outputs.
test-nbval: $(STAMP)
	rm -rf $(NB_CACHE)
	$(OFFLINE) FEATUNIV_CACHE=$(NB_CACHE) $(PY) -m pytest --nbval notebooks --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env -q -p no:cacheprovider

clean:
	rm -rf build cache
