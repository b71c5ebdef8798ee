# Two commands do all the set-up on a fresh machine (see README):
#   make book   builds the Jupyter Book into _build/html (executes every chapter)
#   make test   runs the unit tests and executes every notebook with nbval
# Each creates or updates the virtual environment .venv when requirements change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test unit bench sync-colab clean

# --no-compile: pip would compile every module of every package (most of torch is never
# imported here); Python compiles what is imported, once, on first use. Measured on a 2-core
# AMD EPYC, fresh venv, twice: install 70-74 s instead of 108-115 s, the first import of torch,
# transformers, matplotlib, nbval and jupyter_book 9.5-9.7 s instead of 4.3 s.
# "Once" holds only where Python may write its bytecode cache: an environment with
# PYTHONDONTWRITEBYTECODE set (this project's build machines have it) makes every process,
# every notebook kernel and test worker, compile the same sources again. The targets below
# unset it, so the venv's __pycache__ fills on first use. Measured on the 2-core AMD EPYC
# (fp32, one thread), a chapter's first cell (imports, judges, the GAN, its training pool, from
# a warm model cache) in a fresh process: 23.6 s while it compiled its imports (as every process
# does with the variable set), 10.4 and 10.8 s in the next two runs, which read the cached bytecode.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	touch $(STAMP)

# First the models the chapters load are trained into the model cache (python -m mmtutor prepare:
# two one-thread processes on a CPU, which get more done than one two-thread process; see
# bench/results/speed.json); cached models are not trained again.
# Then the chapters run two at a time in one-thread kernels, for the same reason, into the
# execution cache the build reads (tools/execute_chapters.py; a failing chapter stops make here,
# with its traceback); the build executes only what that cache lacks.
# -W --keep-going: any warning (a failing cell included) fails the build, after reporting all of them.
# Each chapter records its run time in _build/timing.json; the preface's table is built from it.
book: $(STAMP)
	MMTUTOR_TIMING_FILE=$(CURDIR)/_build/timing.json $(BIN)/python -m mmtutor prepare
	MMTUTOR_TIMING_FILE=$(CURDIR)/_build/timing.json $(BIN)/python tools/execute_chapters.py
	MMTUTOR_TIMING_FILE=$(CURDIR)/_build/timing.json $(BIN)/jupyter-book build . -W --keep-going

# The unit tests in two one-thread pytest-xdist workers (measured on a 2-core AMD EPYC, same day:
# 344 s against 393 s in one two-thread process), then nbval over the chapters, two notebooks at
# a time in one-thread kernels (one worker per notebook file), as make book runs them.
test: $(STAMP)
	$(BIN)/python -m mmtutor prepare
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n 2
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest notebooks --nbval-lax -n 2 --dist loadfile

unit: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n 2

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

sync-colab: $(STAMP)
	$(BIN)/python tools/sync_colab.py

clean:
	rm -rf _build
