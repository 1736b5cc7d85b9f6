# Two front doors: `make demo` and `make test`. Everything else is installed on the way.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps demo test k8s-build k8s-test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Mosquitto is the real broker the tests and the demo use, with edgeoffload's client-id plugin
# compiled against its headers (edgeoffload/brokerplugin.py); Chromium drives the page tests.
SYSTEM_PACKAGES := mosquitto mosquitto-dev libmosquitto-dev gcc libc6-dev chromium chromium-driver
system-deps:
	@{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ] \
	  && [ -f /usr/include/mosquitto_plugin.h ] && [ -f /usr/include/mosquitto.h ] && command -v cc >/dev/null || { \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); }

demo: install system-deps
	$(VENV)/bin/edgeoffload demo

test: install system-deps
	$(PY) -m pytest -q

# The real control plane (etcd, kube-apiserver, kube-controller-manager, kwok) from pinned Go
# modules, cached (k8s/build.sh --dir); then the tests against it (tests/k8s, marker k8s).
# A failed build still runs pytest, whose skips then say why.
k8s-build:
	bash k8s/build.sh

k8s-test: install
	@bash k8s/build.sh || echo "k8s/build.sh failed: the Kubernetes tests will be skipped (reason above)"
	$(PY) -m pytest -q -m k8s tests/k8s

bench: install system-deps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
