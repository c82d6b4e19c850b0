# The two commands (README): `make demo` runs the product, `make test` runs every test.
# Each does its own set-up: scripts/setup_venv.sh creates/refreshes .venv (idempotent, stamp files).
# LITESEG_ROS_DISTRO=kilted make test: the same on ROS 2 Kilted's wheels, in .venv-kilted.
LITESEG_ROS_DISTRO ?= jazzy
export LITESEG_ROS_DISTRO
VENV ?= $(if $(filter jazzy,$(LITESEG_ROS_DISTRO)),.venv,.venv-$(LITESEG_ROS_DISTRO))
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup:
	@LITESEG_VENV=$(abspath $(VENV)) bash scripts/setup_venv.sh

demo: setup
	$(PY) -m liteseg_ros.cli demo $(DEMO_ARGS)

test: setup
	$(PY) -m ruff check liteseg_ros test benchmarks launch fuzz
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check liteseg_ros test benchmarks launch fuzz

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build install log .pytest_cache .ruff_cache
