# Two front doors: `make demo` and `make test`. Everything else is installed on the way.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Mosquitto is the real broker the tests and the demo use; Chromium drives the page tests.
system-deps:
	@{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ] || { \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto chromium chromium-driver; }

demo: install system-deps
	$(VENV)/bin/edgeoffload demo

test: install system-deps
	$(PY) -m pytest -q

bench: install system-deps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
