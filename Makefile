# featuniv: `make figures` regenerates every figure of a profile; `make test` runs all tests (after `make check`).
PROFILE ?= tiny
# overrides of single values, e.g. make figures SET="similarity.n_shuffles=100 layers.A=[1,2]"
SET ?=
# notebooks run at once after 03 by make figures: auto (two where the CPUs and memory allow) or a number
JOBS ?= auto
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests never touch the network; `make figures PROFILE=pythia` needs the hub, so only the test and
# offline targets set HF_HUB_OFFLINE.
OFFLINE := HF_HUB_OFFLINE=1
export WANDB_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export PYTHONHASHSEED := 0

.PHONY: venv figures executed lab exercises site atlas models notebooks bench pythia-standin check test test-fast test-pytest test-lane2 test-unit test-chain test-nbval clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (featuniv)"
	touch $(STAMP)

## Run notebooks 01-09 on PROFILE (default tiny; pythia and gemma need the hub); executed copies go to build/PROFILE/.
## On tiny with the pinned CPU arithmetic of `make notebooks` (ARITH=native: this machine's own kernels and threads).
figures: $(STAMP)
	$(FIGURES_ENV) $(PY) -m featlib.tools.chain --profile $(PROFILE) $(foreach s,$(SET),--set '$(s)') --jobs $(JOBS)

## Keep PROFILE's executed notebooks (build/PROFILE/, from make figures) in notebooks/PROFILE/, to commit them
## (the smollm-gemma run is committed so that its results can be read without a 50-minute run).
executed:
	test "$(PROFILE)" != tiny || { echo "PROFILE=tiny: its executed notebooks are notebooks/*.ipynb (make notebooks)"; exit 2; }
	test -f build/$(PROFILE)/09_transfer.ipynb || { echo "build/$(PROFILE)/ lacks executed notebooks: run make figures PROFILE=$(PROFILE) first"; exit 2; }
	rm -rf notebooks/$(PROFILE) && mkdir -p notebooks/$(PROFILE)
	cp build/$(PROFILE)/[0-9][0-9]_*.ipynb notebooks/$(PROFILE)/

## JupyterLab in the project's environment, opened on notebooks/ (LAB_ARGS passes options, e.g. LAB_ARGS=--no-browser).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

## The coursework's student notebooks exercises/NN_*.ipynb from their solutions exercises/solutions/ (docs/coursework.md);
## the tests fail when they are out of date.
exercises: $(STAMP)
	$(PY) -m featlib.tools.exercises

## The executed notebooks as a static site in build/site/ (tiny: the committed ones; other profiles: build/LABEL/
## from make figures), atlas pages embedded; open build/site/index.html. Run make atlas first for tiny's atlas page.
site: $(STAMP)
	$(PY) -m featlib.tools.site

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
# ... and with the same CPU arithmetic where it can be pinned: SAE training is chaotic enough that the
# kernel set (AVX-512 vs AVX2, MKL's code path) or the thread count moves which weak pairs survive.
# Pinned: one thread, torch's AVX2 kernels, MKL's AVX2 branch in its reproducible mode, OpenBLAS's
# Haswell kernels. MKL still computes differently on AMD and Intel, so nbval masks what another SAE
# changes (tests/nbval_sanitize.cfg); tests/test_reproducible.py checks the pin.
PINNED_CPU := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 OPENBLAS_CORETYPE=Haswell

# make figures: tiny's chain with the same arithmetic as the committed notebooks, so that on a CPU of the same
# vendor it writes the committed tables byte for byte (one thread per process, every core kept busy with
# single-threaded SAE workers and two kernels at once: FEATUNIV_CPUS); other profiles, or ARITH=native, with
# this machine's own kernels and threads.
ARITH ?= $(if $(filter tiny,$(PROFILE)),pinned,native)
ifeq ($(filter $(ARITH),pinned native),)
$(error ARITH=$(ARITH) is not pinned or native. Fix: make figures ARITH=pinned (the committed notebooks' arithmetic) or ARITH=native)
endif
FIGURES_ENV := $(if $(filter pinned,$(ARITH)),$(PINNED_CPU) FEATUNIV_CPUS=$$(nproc))

## Re-execute the committed notebooks in place with their defaults (the tiny profile).
# Every kernel is single-threaded here, so 04-09 two at a time give the same notebooks as one after the other.
notebooks: $(STAMP)
	rm -rf $(NB_CACHE)
	$(OFFLINE) $(PINNED_CPU) FEATUNIV_CPUS=$$(nproc) FEATUNIV_CACHE=$(NB_CACHE) $(PY) -m featlib.tools.chain --profile tiny --in-place --jobs 2

# The pythia profile at its real sizes (6 + 12 layers, 32,768-latent TopK SAEs, 30,000 tokens, 1,000 and 200
# re-pairings) on offline stand-ins in the hub's formats, built once (an estimated 45 minutes idle, 3.5 GB): the paper's
# setting timed end to end from an empty cache of its own; seconds per notebook in figures/pythia-standin/manifest.json.
STANDINS := build/standins
STANDIN_ENV := HF_HUB_OFFLINE=1 HF_HUB_CACHE=$(CURDIR)/$(STANDINS)/hub FEATUNIV_CACHE=$(CURDIR)/$(STANDINS)/cache

## The pythia profile's chain at its real sizes on offline stand-ins (see above; 37 minutes on 2 idle cores).
pythia-standin: $(STANDINS)/.built
	rm -rf $(STANDINS)/cache
	$(STANDIN_ENV) $(PY) -m featlib.tools.chain --profile $(STANDINS)/pythia-standin.yaml

$(STANDINS)/.built: $(STAMP) featlib/tools/standins.py
	rm -rf $(STANDINS)
	$(STANDIN_ENV) $(PY) -m featlib.tools.standins --scale full --out $(STANDINS)
	touch $@

## Fast paths vs plain reference runs, measured in one process (a few minutes).
bench: $(STAMP)
	$(PY) -m featlib.tools.bench

## The gate on featlib/ (configured in pyproject.toml): ruff's lint and format check, then mypy.
check: $(STAMP)
	$(PY) -m ruff check featlib
	$(PY) -m ruff format --check featlib
	$(PY) -m mypy

# `make check`, then two lanes, one thread each (two cores do about a third more as two single-threaded jobs
# than as one job on both): the pytest tests in one session (unit tests and the chains; the hub stand-ins
# are built once) beside nbval followed by the tests marked beside_nbval (the exercise solutions, on nbval's
# tiny artifacts), so that the lanes end together. A lane's output appears when it ends.
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
test: $(STAMP) check
	$(MAKE) --no-print-directory -j2 --output-sync=target test-pytest test-lane2

test-lane2: test-nbval
	$(OFFLINE) $(ONE_THREAD) FEATUNIV_EXERCISE_CACHE=$(NB_CACHE) $(PY) -m pytest tests -q -m beside_nbval -p no:cacheprovider --durations=5

## The fast lane (under a minute on 2 cores): every test not marked slow, outside tests/chain (docs/tests.md).
test-fast: $(STAMP)
	$(OFFLINE) $(ONE_THREAD) $(PY) -m pytest tests -q -m "not slow" --ignore=tests/chain -p no:cacheprovider --durations=5

test-pytest: $(STAMP)
	$(OFFLINE) $(ONE_THREAD) $(PY) -m pytest tests -q -m "not beside_nbval" -p no:cacheprovider --durations=15

## Every test outside tests/chain, the slow ones too (the Colab simulation, the exercises, bench).
test-unit: $(STAMP)
	$(OFFLINE) $(PY) -m pytest tests -q --ignore=tests/chain

## The whole chain through papermill: the smoke profile, the pythia profile on hub stand-ins, smollm-gemma small.
test-chain: $(STAMP)
	$(OFFLINE) $(PY) -m pytest tests/chain -q -p no:cacheprovider

## The committed, executed notebooks re-run and compared with their stored outputs.
test-nbval: $(STAMP)
	rm -rf $(NB_CACHE)
	$(OFFLINE) $(PINNED_CPU) FEATUNIV_CACHE=$(NB_CACHE) $(PY) -m pytest --nbval notebooks/[0-9][0-9]_*.ipynb --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env --nbval-cell-timeout=7200 -p tests.nbval_plugin -q -p no:cacheprovider --durations=10

clean:
	rm -rf build cache
