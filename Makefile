# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-video demo-music demo-digits demo-toy test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: compositional text-to-image in latent space (recipes/shapes_t2i.yaml): the generated shapes
# set (seconds), its latents + text embeddings cached once through the shipped f4 tokenizer and MiniLM, then the
# MM-DiT trained in a fresh run folder. It ends with the shapes probe's table on the held-out prompts and the
# paths of the sample grids.
SHAPES := data/shapes
$(SHAPES)/train/metadata.jsonl: $(STAMP) mmflow/data/shapes.py Makefile
	$(PY) -m mmflow.data.shapes --out $(SHAPES)/train --split train --n-two 4000
$(SHAPES)/test/metadata.jsonl: $(STAMP) mmflow/data/shapes.py
	$(PY) -m mmflow.data.shapes --out $(SHAPES)/test --split test

demo: $(STAMP) $(SHAPES)/train/metadata.jsonl $(SHAPES)/test/metadata.jsonl
	$(VENV)/bin/mmflow prepare recipes/shapes_t2i.yaml --batch-size 64
	$(VENV)/bin/mmflow train recipes/shapes_t2i.yaml --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

# Text-to-video on the generated moving-shapes set (recipes/shapes_t2v.yaml): clips (about a minute to write
# as MP4), their latents + text embeddings cached through the shipped video tokenizer, then the MM-DiT.
SHAPES_VIDEO := data/shapes_video
$(SHAPES_VIDEO)/train/metadata.jsonl: $(STAMP) mmflow/data/shapes_video.py
	$(PY) -m mmflow.data.shapes_video --out $(SHAPES_VIDEO)/train --split train
$(SHAPES_VIDEO)/test/metadata.jsonl: $(STAMP) mmflow/data/shapes_video.py
	$(PY) -m mmflow.data.shapes_video --out $(SHAPES_VIDEO)/test --split test

demo-video: $(STAMP) $(SHAPES_VIDEO)/train/metadata.jsonl $(SHAPES_VIDEO)/test/metadata.jsonl
	$(VENV)/bin/mmflow prepare recipes/shapes_t2v.yaml --batch-size 32
	$(VENV)/bin/mmflow train recipes/shapes_t2v.yaml --run-dir runs/demo-video-$$(date +%Y%m%d-%H%M%S)

# Text-to-music on the generated tones set (recipes/tones_t2m.yaml): 4 s clips (half of the train clips cut
# short for timing conditioning), their latents + text embeddings cached through the shipped audio tokenizer,
# then the MM-DiT with timing conditioning.
TONES := data/tones_timed
$(TONES)/train/metadata.jsonl: $(STAMP) mmflow/data/tones.py
	$(PY) -m mmflow.data.tones --out $(TONES)/train --split train --short-fraction 0.5
data/tones/test/metadata.jsonl: $(STAMP) mmflow/data/tones.py
	$(PY) -m mmflow.data.tones --out data/tones/test --split test

demo-music: $(STAMP) $(TONES)/train/metadata.jsonl data/tones/test/metadata.jsonl
	$(VENV)/bin/mmflow prepare recipes/tones_t2m.yaml --batch-size 64
	$(VENV)/bin/mmflow train recipes/tones_t2m.yaml --run-dir runs/demo-music-$$(date +%Y%m%d-%H%M%S)

# Text-to-image on scikit-learn's handwritten digits in pixel space (the earlier main job, a few CPU minutes).
demo-digits: $(STAMP)
	$(VENV)/bin/mmflow train recipes/digits_image.yaml --run-dir runs/demo-digits-$$(date +%Y%m%d-%H%M%S)

# The engine's 2-D toy (class-conditional 8 gaussians), with its distribution-distance report.
demo-toy: $(STAMP)
	$(VENV)/bin/mmflow train recipes/toy2d.yaml --run-dir runs/demo-toy-$$(date +%Y%m%d-%H%M%S)

# One pytest-xdist worker per core (at most 4), whole test files per worker so module fixtures are built once;
# tests/conftest.py splits the cores' threads between the workers.
test: $(STAMP)
	$(PY) -m pytest -q -ra -n auto --maxprocesses 4 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) runs
