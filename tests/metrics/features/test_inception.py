"""FID Inception features: parity with pytorch-fid's FID Inception (same random weights, its download
patched out), clean-fid's resizer for resize="clean", weight files (.pth / .safetensors / wrong ones)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mmflow.errors import UserError
from mmflow.metrics.features import get_features
from mmflow.metrics.features.inception import (FID_WEIGHTS_FILE, FID_WEIGHTS_URL, FIDInceptionV3, InceptionFeatures,
                                               UnknownResize, resize_for_inception)
from mmflow.metrics.features.weights import MissingWeights, WrongWeights

# reference implementations, test-only dependencies (the `test` extra): imported, never skipped
import pytorch_fid.inception as pytorch_fid_inception  # noqa: E402
from cleanfid.resize import build_resizer  # noqa: E402


def random_fid_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like pytorch-fid's weights file (fc included), with random values whose
    activations stay O(1) through the 94 conv/BN layers (so the comparison is not of zeros)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            state[k] = torch.randn(v.shape, generator=g) * (2 / fan_in) ** 0.5
        elif k.endswith(("bn.weight", "bn.running_var")):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("bn.bias", "bn.running_mean")):
            state[k] = (torch.rand(v.shape, generator=g) - 0.5) * 0.2
        else:  # num_batches_tracked
            state[k] = v.clone()
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.02
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def fid_state() -> dict[str, torch.Tensor]:
    return random_fid_state()


@pytest.fixture(scope="module")
def pth_file(tmp_path_factory, fid_state):
    path = tmp_path_factory.mktemp("weights") / FID_WEIGHTS_FILE
    torch.save(fid_state, path)
    return path


def pytorch_fid_reference(state: dict[str, torch.Tensor], monkeypatch, **kw) -> torch.nn.Module:
    """pytorch-fid's InceptionV3(use_fid_inception=True) with its weights download replaced by `state`."""
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    return pytorch_fid_inception.InceptionV3([3], use_fid_inception=True, **kw).eval()


def quantized_images(n: int, size: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1] on the uint8 grid (as read from PNGs), with smooth structure."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=(size, size), mode="bilinear")
    return (x * 255).round().to(dtype) / 127.5 - 1


def test_legacy_matches_pytorch_fid_in_float64(pth_file, fid_state, monkeypatch):
    ours = get_features("inception", path=str(pth_file), resize="legacy").double()
    ref = pytorch_fid_reference(fid_state, monkeypatch).double()
    x = quantized_images(2, 64, dtype=torch.float64)  # (2, 3, 64, 64)
    with torch.no_grad():
        want = ref((x + 1) / 2)[0].flatten(1)  # pytorch-fid takes [0, 1]
        got = ours(x)
    assert got.shape == (2, 2048) and got.dtype == torch.float32  # computed in float64, returned as float32
    assert want.abs().mean() > 1e-2  # non-trivial activations
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-9)  # equal up to the last rounding


def test_clean_matches_cleanfid_resizer_and_pytorch_fid_network(fid_state, monkeypatch):
    """clean = clean-fid's own resizer (Pillow bicubic, float) then (x - 128) / 128 into the FID network."""
    ours = InceptionFeatures(resize="clean").eval()
    ours.net.load_state_dict({k: v for k, v in fid_state.items() if not k.startswith("fc.")})
    ref = pytorch_fid_reference(fid_state, monkeypatch, resize_input=False, normalize_input=False)
    x = quantized_images(2, 48)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (2, 48, 48, 3)
    resizer = build_resizer("clean")
    resized = torch.from_numpy(np.stack([resizer(im) for im in u8])).permute(0, 3, 1, 2)  # (2, 3, 299, 299)
    want_input = (resized - 128) / 128
    got_input = resize_for_inception(x, "clean")
    torch.testing.assert_close(got_input, want_input, rtol=0, atol=2e-5)  # float32 Pillow vs torch: ~1e-3 of a level
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(want_input)[0].flatten(1), rtol=1e-4, atol=1e-5)


def test_resize_modes_differ_and_match_their_references():
    x = quantized_images(1, 32)
    clean, legacy = resize_for_inception(x, "clean"), resize_for_inception(x, "legacy")
    assert clean.shape == legacy.shape == (1, 3, 299, 299)
    assert (clean - legacy).abs().max() > 0.01  # bicubic + TF scaling vs bilinear + 2x - 1
    # legacy is clean-fid's "legacy_pytorch" resizer (pytorch-fid's F.interpolate) then 2x/255 - 1
    u8 = ((x[0] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    want = torch.from_numpy(build_resizer("legacy_pytorch")(u8)).permute(2, 0, 1)[None] / 127.5 - 1
    torch.testing.assert_close(legacy, want, rtol=0, atol=1e-5)
    # clean when shrinking (where the antialiasing matters): clean-fid's resizer too
    x = quantized_images(1, 400)
    u8 = ((x[0] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    want = (torch.from_numpy(build_resizer("clean")(u8)).permute(2, 0, 1)[None] - 128) / 128
    torch.testing.assert_close(resize_for_inception(x, "clean"), want, rtol=0, atol=2e-5)
    with pytest.raises(UnknownResize, match="'nearest'"):
        resize_for_inception(x, "nearest")  # type: ignore[arg-type]


def test_safetensors_file_gives_the_same_features_and_describe_has_the_sha(pth_file, fid_state, tmp_path):
    st = tmp_path / "fid_inception.safetensors"
    save_file({k: v.contiguous() for k, v in fid_state.items()}, str(st))
    a, b = get_features("inception", path=str(pth_file)), get_features("inception", path=str(st))
    x = quantized_images(1, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    d = b.describe()
    assert d == {"name": "inception", "dim": 2048, "resize": "clean",
                 "weights_sha256": hashlib.sha256(st.read_bytes()).hexdigest()}
    assert a.describe()["weights_sha256"] != d["weights_sha256"]


def test_wrong_architecture_names_keys_and_file(fid_state, tmp_path):
    # torchvision's ImageNet Inception: the same convs, plus AuxLogits and a 1000-way classifier
    imagenet = dict(fid_state, **{"AuxLogits.fc.weight": torch.zeros(1000, 768), "fc.weight": torch.zeros(1000, 2048)})
    path = tmp_path / "inception_v3_google.pth"
    torch.save(imagenet, path)
    with pytest.raises(WrongWeights, match=r"inception_v3_google\.pth.*unexpected keys: AuxLogits\.fc\.weight.*"
                                           r"wrong shapes: fc\.weight \(1000, 2048\) \(wants \(1008, 2048\)\)"):
        get_features("inception", path=str(path))
    truncated = {k: v for k, v in fid_state.items() if not k.startswith("Mixed_7c.")}
    path = tmp_path / "truncated.safetensors"
    save_file(truncated, str(path))
    with pytest.raises(WrongWeights, match=r"truncated\.safetensors.*missing keys: Mixed_7c\.branch1x1\.bn\.bias, .* more\)"):
        get_features("inception", path=str(path))


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(MissingWeights) as e:
        get_features("inception")
    assert FID_WEIGHTS_FILE in str(e.value) and FID_WEIGHTS_URL in str(e.value)
    assert isinstance(e.value, UserError)
    with pytest.raises(MissingWeights, match="nope.pth"):
        get_features("inception", path=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WrongWeights, match="junk.pth"):
        get_features("inception", path=str(junk))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WrongWeights, match="list.pth.*list"):
        get_features("inception", path=str(tmp_path / "list.pth"))
