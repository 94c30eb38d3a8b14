# energyflow_ros — the two commands a newcomer needs:
#   make demo   set up the environment, then run the main job
#   make test   set up the environment, then run the test suite
# Both create/update .venv from the pinned requirements.txt (idempotent, a few minutes the
# first time, seconds afterwards).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp

.PHONY: venv demo test colcon-build clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: venv
	$(PY) -m energyflow_ros.cli.demo $(ARGS)

test: venv
	$(PY) -m pytest test -q -p no:cacheprovider $(ARGS)

colcon-build: venv
	$(VENV)/bin/colcon build --base-paths . --build-base build --install-base install

clean:
	rm -rf build install log outputs
