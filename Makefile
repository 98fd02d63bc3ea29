VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test bench clean-venv

# One venv for running and testing: requirements-test.txt includes requirements.txt (the image installs only that).
$(STAMP): requirements.txt requirements-test.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-test.txt
	touch $(STAMP)

## Run broker (embedded default), beat and one worker on all five queues in the foreground.
run: $(STAMP)
	$(PYTHON) celery_beat_manager.py foreground --service all

## Create the virtual environment if needed and run the whole test suite.
test: $(STAMP)
	$(PYTHON) -m pytest

## Throughput benchmark: our app against bare Celery on the same broker.
bench: $(STAMP)
	$(PYTHON) bench/throughput.py
