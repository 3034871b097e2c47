# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-toy test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: text-to-image digits with the MM-DiT (a few CPU minutes), in a fresh run folder each time.
# It prints the classifier check (accuracy at w=1 and w=3) and where the sample grids are.
demo: $(STAMP)
	$(VENV)/bin/mmflow train recipes/digits_image.yaml --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

# The engine's 2-D toy (class-conditional 8 gaussians), with its distribution-distance report.
demo-toy: $(STAMP)
	$(VENV)/bin/mmflow train recipes/toy2d.yaml --run-dir runs/demo-toy-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) runs
