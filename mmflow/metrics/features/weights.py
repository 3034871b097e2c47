"""Local weight files of feature extractors: finding them, loading them safely, fingerprinting them.

Nothing downloads. A missing path is an error that names the file wanted and where such a file
comes from; a file that does not fit is an error that names the keys or shapes at fault. State
dicts load with safetensors or `torch.load(weights_only=True)` (never plain pickle); TorchScript
files with `torch.jit.load(map_location="cpu")`.

    path = require_path(path, "CLIP model folder", "save_pretrained of a transformers CLIPModel", folder=True)
    state = read_state_dict("weights/net.pth")          # {key: tensor}
    load_checked(net, state, "weights/net.pth")         # strict, errors name the keys
    describe["weights_sha256"] = file_sha256(path)      # memoised per (path, size, mtime)
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mmflow.errors import MissingInput, UserError
from mmflow.utils.hashing import file_sha256

__all__ = ["MissingWeights", "WrongWeights", "file_sha256", "folder_sha256", "load_checked", "load_torchscript",
           "read_state_dict", "require_path"]


class MissingWeights(MissingInput):
    """A feature extractor's weights path is not given or not there; the message says where one comes from."""


class WrongWeights(UserError, ValueError):
    """A weights file that is unreadable or is not the architecture asked for (names the keys / shapes)."""


def require_path(path: str | os.PathLike | None, what: str, source: str, folder: bool = False) -> Path:
    """`path` as a Path once it exists (a folder if `folder`); else MissingWeights naming `what` and `source`."""
    hint = f"(mmflow downloads nothing: {source})"
    if path is None or str(path) == "":
        raise MissingWeights(f"this feature extractor needs a local {what}: pass its path {hint}")
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingWeights(f"{p}: no such {what} {hint}")
    if folder != p.is_dir():
        raise MissingWeights(f"{p}: not a {what} (expected a {'folder' if folder else 'file'}) {hint}")
    return p


def folder_sha256(folder: Path, patterns: Sequence[str] = ("*.safetensors",)) -> str:
    """One digest over the files of `folder` matching `patterns` (their names and sha256); MissingWeights if none."""
    files = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if not files:
        raise MissingWeights(f"{folder}: no weights file ({', '.join(patterns)}) in this folder")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """{key: tensor} from a .safetensors file, else from a torch.save file read with weights_only=True (a
    {"state_dict": {...}} wrapper is unwrapped); MissingWeights / WrongWeights name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeights(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (safetensors, pickle and zip errors have no common base)
        raise WrongWeights(f"{path}: cannot be read as a state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WrongWeights(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def _listed(items: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(items[:most])
    return f"{shown} ({len(items) - most} more)" if len(items) > most else shown


def load_checked(module: nn.Module, state: Mapping[str, Tensor], path: str | os.PathLike,
                 ignore: Sequence[str] = (), shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Load `state` into `module` strictly; WrongWeights names every missing / unexpected key and wrong shape.

    BatchNorm's `num_batches_tracked` may be absent. Keys under an `ignore` prefix (parts of the file
    the module does not use) may be present or absent; when present, those named in `shapes` must have
    that shape.
    """
    expected = module.state_dict()
    shapes = dict(shapes or {})
    ignored = tuple(ignore)
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected and not (ignored and k.startswith(ignored)))
    want = {**{k: tuple(v.shape) for k, v in expected.items()}, **shapes}
    wrong = [f"{k} {tuple(v.shape)} (wants {tuple(want[k])})" for k, v in sorted(state.items())
             if k in want and tuple(v.shape) != tuple(want[k])]
    problems = [f"{what}: {_listed(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise WrongWeights(f"{path}: not the weights of a {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def load_torchscript(path: Path, what: str) -> torch.jit.ScriptModule:
    """A TorchScript module from `path` on the CPU, in eval mode; WrongWeights when it is not one."""
    try:
        with warnings.catch_warnings():  # torch 2.11 deprecates TorchScript, but these files are what users have
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001  (torch.jit.load raises RuntimeError or ValueError by cause)
        first = str(e).splitlines()[0] if str(e) else ""
        raise WrongWeights(f"{path}: not a TorchScript file (a {what} must be saved with torch.jit.save): "
                           f"{type(e).__name__}: {first}") from e
    return module.eval()
