# Everyday commands. Each one sets up .venv first if it is missing or pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

# every test: the package's unit tests
test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
