# Everyday commands. Each one sets up .venv first if it is missing or pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# what `make sample` passes to the sample command (sample.py's flags)
ARGS ?= --start="ROMEO:" --num_samples=3 --max_new_tokens=200

.PHONY: setup sample test lab notebooks html student assignment bench bench-update clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh scripts/install_torch.py
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

# the main job: sample from the pocket model, offline, as sample.py would
sample: setup
	$(PY) -m nanogpt_edu.sample $(ARGS)

# every test: the package's unit tests, then every notebook's stored outputs re-checked by nbval. The tests run
# side by side, a worker per core (at most 4), in the work units tests/conftest.py defines (--dist loadscope: a
# notebook's nbval cells run in order in one kernel, the longest units go first). TEST_ARGS adds pytest options
# ("-n 0": all in this one process).
TEST_ARGS ?=
test: setup
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadscope tests notebooks --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg $(TEST_ARGS)

# JupyterLab on the series. Jupyter refuses to start as root (containers, some class servers) unless told to, so
# --allow-root is added only then; LAB_ARGS adds more (in a container: LAB_ARGS="--ip=0.0.0.0 --no-browser").
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# re-run every notebook top to bottom, in order, and store the fresh outputs (after changing a notebook or the package)
notebooks: setup
	@for nb in $(NOTEBOOKS); do \
	  echo "running $$nb"; \
	  HF_HUB_DISABLE_PROGRESS_BARS=1 $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.record_timing=False "$$nb" || exit 1; \
	done
	$(PY) scripts/tidy_notebooks.py $(NOTEBOOKS)

# the static HTML editions (stored outputs, no network): build/html/teacher (solutions folded under "show
# solution") and build/html/student (no solutions); open index.html in either
html: setup
	$(PY) scripts/html_edition.py --out build/html

# the student edition: the series without solution cells and outputs, in build/student (to hand out)
student: setup
	$(PY) scripts/student_edition.py --out build/student

# the series as an nbgrader source assignment in build/classroom (needs the extra: pip install -e '.[classroom]')
assignment: setup
	$(PY) scripts/nbgrader_assignment.py --out build/classroom

# speed and memory measurements: prints tables, writes build/bench/ (untracked); it took 9 and 11 minutes in two
# runs on one 2-core machine (2026-12-03). `make bench-update` writes the committed copy in bench/results/ instead.
BENCH_OUT ?= build/bench
bench: setup
	$(PY) bench/generation.py --out $(BENCH_OUT)
	$(PY) bench/matvec.py
	$(PY) bench/decode_parts.py
	$(PY) bench/porting_memory.py --out $(BENCH_OUT)

bench-update:
	$(MAKE) bench BENCH_OUT=bench/results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
