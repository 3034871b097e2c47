"""Feature extraction speed on CPU: items/s per registered feature extractor (mmflow.metrics.features).

Each name is built from the local weights given with `--path NAME=PATH`, else with random weights
where the extractor allows it (speed does not depend on the values: RANDOM_WEIGHTS), else as
`get_features(NAME)` (extractors without weights); a name that needs a file or folder not given is
skipped with the reason. Input is random media of the extractor's modality (INPUTS: image 64x64,
video 16 frames of 64x64, audio 1 s at the extractor's rate) unless NAME_INPUTS gives the name its own,
so the row includes the extractor's own resizing. A reference implementation, where one is installed (REFERENCES), runs beside it in the
same process on the same input and weights.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_extraction.py                  # every registered name
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_extraction.py inception "inception (legacy resize)"
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_extraction.py clip --path clip=/models/clip-vit-b32
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mmflow.errors import UserError
from mmflow.metrics.features import FEATURES, FeatureExtractor, get_features


def _random_inception(resize: str = "clean") -> FeatureExtractor:
    from mmflow.metrics.features.inception import InceptionFeatures

    return InceptionFeatures(resize)  # type: ignore[arg-type]


def _random_clip() -> FeatureExtractor:
    """CLIP ViT-B/32's shapes (transformers' CLIPConfig defaults) with random weights, 224 px preprocessing."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mmflow.metrics.features.clip import ClipFeatures

    return ClipFeatures(CLIPModel(CLIPConfig()).eval(), None, CLIPImageProcessor())


def _random_clap() -> FeatureExtractor:
    """CLAP HTSAT-unfused's shapes (transformers' ClapConfig defaults) with random weights, 48 kHz input."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from mmflow.metrics.features.clap import ClapFeatures

    return ClapFeatures(ClapModel(ClapConfig()).eval(), None, ClapFeatureExtractor(truncation="rand_trunc"))


# extractors whose speed can be measured without their weights file: name -> random-weights builder
RANDOM_WEIGHTS: dict[str, Callable[[], FeatureExtractor]] = {
    "inception": _random_inception,
    "inception (legacy resize)": lambda: _random_inception("legacy"),
    "clip": _random_clip,
    "clap": _random_clap,
    "video_frames (pixels frames)": lambda: get_features("video_frames", frames="pixels"),  # weight-free
    "mel (deltas)": lambda: get_features("mel", deltas=True),  # weight-free
}
# extra rows of a registered name: row -> (name, options)
ALIASES: dict[str, tuple[str, dict]] = {"inception (legacy resize)": ("inception", {"resize": "legacy"}),
                                        "video_frames (pixels frames)": ("video_frames", {"frames": "pixels"}),
                                        "mel (deltas)": ("mel", {"deltas": True})}

# random media in [-1, 1] for a batch: modality -> (batch, extractor, generator) -> tensor
INPUTS: dict[str, Callable[[int, FeatureExtractor, torch.Generator], Tensor]] = {
    "image": lambda b, f, g: torch.rand(b, 3, 64, 64, generator=g) * 2 - 1,  # (B, 3, 64, 64)
    "video": lambda b, f, g: torch.rand(b, 3, 16, 64, 64, generator=g) * 2 - 1,  # (B, 3, T, 64, 64)
    "audio": lambda b, f, g: torch.rand(b, 1, f.sample_rate or 16000, generator=g) * 2 - 1,  # (B, 1, N): 1 s
}

# names whose input is not their modality's default: name -> builder as in INPUTS
NAME_INPUTS: dict[str, Callable[[int, FeatureExtractor, torch.Generator], Tensor]] = {
    "probe:music": lambda b, f, g: torch.rand(b, 1, 64000, generator=g) * 2 - 1,  # its clips: 4 s at 16 kHz
    "probe:digits": lambda b, f, g: torch.rand(b, 1, 32, 32, generator=g) * 2 - 1,  # 1-channel digit images
}


def _pytorch_fid(extractor: FeatureExtractor) -> Callable[[Tensor], Tensor] | None:
    """pytorch-fid's FID InceptionV3 with the extractor's weights (its download patched out)."""
    try:
        import pytorch_fid.inception as pfi
    except ImportError:
        return None
    state = extractor.net.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    pfi.load_state_dict_from_url = lambda *a, **k: state
    ref = pfi.InceptionV3([3]).eval()
    return lambda x: ref((x + 1) / 2)[0]


def _hf_clip(extractor: FeatureExtractor) -> Callable[[Tensor], Tensor]:
    """The same CLIPModel fed by the HF route: uint8 arrays through CLIPImageProcessor (PIL / torchvision)."""
    import numpy as np
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()

    def forward(x: Tensor) -> Tensor:
        arrays = [np.round((im.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for im in x]
        pixels = processor(images=arrays, return_tensors="pt")["pixel_values"]
        return extractor.model.get_image_features(pixel_values=pixels)

    return forward


# name -> (label, builder of a reference forward on the same media, or None when not installed)
REFERENCES: dict[str, tuple[str, Callable[[FeatureExtractor], Callable[[Tensor], Tensor] | None]]] = {
    "inception (legacy resize)": ("pytorch-fid InceptionV3 (same resize)", _pytorch_fid),
    "clip": ("HF CLIPImageProcessor + get_image_features", _hf_clip),
}


def build(name: str, path: str | None) -> FeatureExtractor:
    if path is not None:
        registered, options = ALIASES.get(name, (name, {}))
        return get_features(registered, path=path, **options)
    if name in RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS[name]().eval().requires_grad_(False)
    return get_features(name)  # extractors without weights; a UserError says what the others need


@torch.no_grad()
def items_per_s(forward: Callable[[Tensor], Tensor], x: Tensor, repeats: int) -> float:
    forward(x)  # warm-up (allocator, one-time set-up)
    t0 = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    return len(x) * repeats / (time.perf_counter() - t0)


def _count(m: nn.Module) -> str:
    return f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="extractor names (default: every registered one, plus extra rows)")
    p.add_argument("--path", action="append", default=[], metavar="NAME=PATH", help="local weights of an extractor")
    p.add_argument("--batch", type=int, default=32, help="items per call")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after one warm-up")
    args = p.parse_args()
    paths = dict(kv.split("=", 1) for kv in args.path)
    names = args.names or sorted(FEATURES) + list(ALIASES)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, batch {args.batch}, {args.repeats} timed calls")
    print(f"{'extractor':<44} {'params':>7} {'input':<16} {'dim':>5} {'items/s':>8}")
    for name in names:
        try:
            f = build(name, paths.get(name))
        except UserError as e:
            print(f"{name:<44} skipped: {e}")
            continue
        x = NAME_INPUTS.get(name, INPUTS[f.modality])(args.batch, f, torch.Generator().manual_seed(0))
        shape = "x".join(map(str, x.shape[1:]))
        try:
            speed = items_per_s(f, x, args.repeats)
        except UserError as e:  # an input this extractor refuses: give it one in NAME_INPUTS
            print(f"{name:<44} skipped: {e}")
            continue
        print(f"{name:<44} {_count(f):>7} {shape:<16} {f.dim:>5} {speed:>8.2f}", flush=True)
        label, make_ref = REFERENCES.get(name, ("", lambda _: None))
        ref = make_ref(f)
        if ref is not None:
            print(f"{'  ref: ' + label:<44} {'':>7} {shape:<16} {f.dim:>5} {items_per_s(ref, x, args.repeats):>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
