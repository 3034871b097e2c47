"""The frozen media encoders: one encode for raw and cached batches, lazy loading, decode crops, export."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from mmflow.config import ConfigError, from_dict, to_dict
from mmflow.model_io import CorruptModel, save_model
from mmflow.tasks.encoders import MediaEncoders, export_mode, folder_fingerprint
from mmflow.text.default import TextEncoderNotFound
from mmflow.text import TextConditionerConfig, TextEncoderConfig
from mmflow.tokenizers import AudioVAE, ImageVAE, audio_vae_config, image_vae_config
from mmflow.train.random import BatchRandom

CAPTIONS = ["a red square", "a blue circle", "", "a green triangle"]


def _text(dropout: float = 0.5) -> TextConditionerConfig:
    return TextConditionerConfig(encoders=[TextEncoderConfig(path="minilm", max_length=8, dropout=dropout)])


def _rng(batch: int = 4) -> BatchRandom:
    return BatchRandom(seed=3, step=5, group=0, slot=0, local_batch=batch, num_slots=1)


def test_a_cached_batch_encodes_exactly_like_the_raw_media(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = ImageVAE(image_vae_config("test", latent_channels=4, latent_shift=[0.1] * 4, latent_scale=[2.0] * 4))
    enc = MediaEncoders(str(save_model(vae, tmp_path / "vae")), _text())
    media = torch.rand(4, 3, 16, 16) * 2 - 1  # (B, C, H, W)
    fields = enc.cache_fields(media, CAPTIONS)
    assert sorted(fields) == ["latent_mean", "latent_std", "text.minilm.mask", "text.minilm.pooled",
                              "text.minilm.tokens"]
    assert all(t.shape[0] == 4 for t in fields.values())
    raw = enc.encode_batch({"media": media, "text": CAPTIONS}, _rng())
    cached = enc.encode_batch(fields, _rng())  # same draws: posterior noise, then each encoder's drop mask
    assert raw.z.shape == (4, *enc.latent_shape((3, 16, 16)))
    torch.testing.assert_close(cached.z, raw.z, rtol=0, atol=1e-6)
    for a, b in ((cached.text.tokens, raw.text.tokens), (cached.text.mask, raw.text.mask),
                 (cached.text.pooled, raw.text.pooled)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # without dropout every row keeps its own caption; the null condition is one row of the same layout
    plain = enc.encode_batch(fields, _rng(), dropout=False).text
    torch.testing.assert_close(plain.tokens, enc.encode_prompts(CAPTIONS).tokens, rtol=0, atol=1e-6)
    assert enc.null().tokens.shape == (1, *plain.tokens.shape[1:])
    assert enc.describe()["tokenizer"] is not None and enc.describe()["text"] == _text().fingerprint()


def test_pixel_space_passes_media_through_and_loads_nothing_until_asked(tmp_path: Path) -> None:
    enc = MediaEncoders(None, _text(dropout=0.0))
    media = torch.rand(2, 3, 8, 8)
    fields = enc.cache_fields(media, CAPTIONS[:2])
    assert "media" in fields and "latent_mean" not in fields
    out = enc.encode_batch({"media": media, "text": CAPTIONS[:2]}, _rng(2))
    assert out.z is media and enc.decode(media) is media and enc.describe()["tokenizer"] is None
    assert enc.latent_shape((3, 8, 8)) == (3, 8, 8)

    missing = MediaEncoders(str(tmp_path / "gone"), _text())  # construction loads nothing...
    with pytest.raises(ConfigError, match="is not a folder"):
        missing.modules()  # ...the first use does


def test_decode_crops_a_padding_tokenizer_to_the_data_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = audio_vae_config("test", sample_rate=8000)  # hop 8
    enc = MediaEncoders(str(save_model(AudioVAE(cfg), tmp_path / "avae")), _text())
    n = 101  # not a multiple of the hop (8): encode pads
    z = enc.cache_fields(torch.zeros(1, 1, n), [""])["latent_mean"]
    assert enc.decode(z).shape[-1] > n and enc.decode(z, like_shape=(1, 1, n)).shape[-1] == n


# ------------------------------------------------------------------ export: a model folder that carries its encoders
def _load_text_factory():
    """tests/text/conftest.py's tiny model writers (save_bert, ...), loaded as a plain module."""
    path = Path(__file__).resolve().parents[1] / "text" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tiny_text_encoders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


save_bert = _load_text_factory().save_bert


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A tiny BERT folder as a hub snapshot holds it: tokenizer, safetensors, a sentence-transformers head,
    and weights in other formats that an export leaves out."""
    save_bert(folder, seed=seed)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    (folder / "onnx").mkdir(exist_ok=True)
    (folder / "onnx" / "model.onnx").write_bytes(b"not loaded")
    return folder


def _split_tokenizer(model: Path, dest: Path) -> Path:
    """Move the model folder's tokenizer files into their own folder (a diffusers pipeline's layout)."""
    dest.mkdir()
    for f in model.glob("tokenizer*.json"):
        shutil.move(str(f), str(dest / f.name))
    return dest


def _media_recipe(tokenizer: Path | None, *encoders: TextEncoderConfig) -> tuple[dict, MediaEncoders]:
    text = TextConditionerConfig(encoders=list(encoders))
    model = {"tokenizer": None if tokenizer is None else str(tokenizer), "text": to_dict(text)}
    recipe = {"name": "t2m", "model": model}
    return recipe, MediaEncoders(recipe["model"]["tokenizer"], text)


def _export(enc: MediaEncoders, folder: Path) -> dict:
    return enc.export(folder / "models")


@pytest.fixture
def vae(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(ImageVAE(image_vae_config("test", latent_channels=4)), tmp_path / "src" / "vae")


def test_an_exported_folder_carries_its_encoders_and_samples_after_the_sources_are_gone(tmp_path: Path, vae) -> None:
    bert = tiny_bert(tmp_path / "src" / "bert")
    tok = _split_tokenizer(bert, tmp_path / "src" / "bert_tokenizer")
    recipe, enc = _media_recipe(vae, TextEncoderConfig(path=str(bert), tokenizer=str(tok), max_length=8))
    before_text, before_vae = enc.text_config.fingerprint(), folder_fingerprint(vae)
    prompt = enc.encode_prompts(["a red face"])
    components = _export(enc, tmp_path / "export")
    assert components == {"tokenizer": {"folder": "models/tokenizer", "fingerprint": before_vae},
                          "text_encoders": {"bert": {"mode": "copy", "folder": "models/text_encoders/bert"}}}
    copied = tmp_path / "export" / "models" / "text_encoders" / "bert"
    assert (copied / "1_Pooling" / "config.json").is_file() and (copied / "tokenizer" / "tokenizer.json").is_file()
    assert not (copied / "pytorch_model.bin").exists() and not (copied / "onnx").exists()

    moved = Path(shutil.move(str(tmp_path / "export"), str(tmp_path / "elsewhere")))
    shutil.rmtree(tmp_path / "src")  # every source path is gone
    resolved = MediaEncoders.resolve_exported(recipe, components, moved)
    assert recipe["model"]["tokenizer"] == str(vae)  # the caller's dict is left alone
    model = resolved["model"]
    assert model["tokenizer"] == str(moved / "models" / "tokenizer")
    entry, bundled = model["text"]["encoders"][0], moved / "models" / "text_encoders" / "bert"
    assert (entry["path"], entry["tokenizer"], entry["name"]) == (str(bundled), str(bundled / "tokenizer"), "bert")
    text = from_dict(TextConditionerConfig, model["text"])
    assert text.fingerprint() == before_text and folder_fingerprint(model["tokenizer"]) == before_vae
    again = MediaEncoders(model["tokenizer"], text)
    torch.testing.assert_close(again.encode_prompts(["a red face"]).tokens, prompt.tokens, rtol=0, atol=0)
    assert again.tokenizer is not None
    assert again.export(moved / "models") == components  # a loaded folder saved again: the same record
    assert again.export(tmp_path / "third" / "models") == components  # ...or elsewhere

    shutil.rmtree(moved / "models" / "text_encoders" / "bert")
    with pytest.raises(CorruptModel, match="text encoder 'bert' folder .*text_encoders/bert is missing"):
        MediaEncoders.resolve_exported(recipe, components, moved)


def test_a_referenced_encoder_is_checked_and_can_be_pointed_elsewhere(tmp_path: Path) -> None:
    bert = tiny_bert(tmp_path / "bert")
    recipe, enc = _media_recipe(None, TextEncoderConfig(path=str(bert), max_length=8, export="reference"))
    components = _export(enc, tmp_path / "export")
    assert components == {"text_encoders": {"bert": {"mode": "reference", "path": str(bert),
                                                      "fingerprint": enc.text_config.encoders[0].fingerprint()}}}
    assert not (tmp_path / "export" / "models").exists()  # nothing copied
    assert MediaEncoders.resolve_exported(recipe, components, tmp_path / "export") == recipe  # still there

    elsewhere = Path(shutil.move(str(bert), str(tmp_path / "encoders" / "bert-v1")))
    missing = r"'bert' is referenced at '.*bert'.*text_encoders=\{\"bert\": .*--text-encoder bert="
    with pytest.raises(TextEncoderNotFound, match=missing):
        MediaEncoders.resolve_exported(recipe, components, tmp_path / "export")
    resolved = MediaEncoders.resolve_exported(recipe, components, tmp_path / "export", {"bert": str(elsewhere)})
    entry = resolved["model"]["text"]["encoders"][0]
    assert (entry["path"], entry["name"]) == (str(elsewhere), "bert")  # the key stays, not "bert-v1"

    with pytest.raises(ConfigError, match=r"\['nope'\] name no referenced text encoder.*references \['bert'\]"):
        MediaEncoders.resolve_exported(recipe, components, tmp_path / "export", {"nope": str(elsewhere)})

    tiny_bert(elsewhere, seed=1)  # other weights under the same path
    with pytest.raises(TextEncoderNotFound, match="'bert' at .* changed since the export.*--text-encoder bert="):
        MediaEncoders.resolve_exported(recipe, components, tmp_path / "export", {"bert": str(elsewhere)})


def test_the_default_encoder_is_referenced_not_copied_and_bundled_ones_take_no_path(tmp_path: Path) -> None:
    bert = tiny_bert(tmp_path / "bert")
    recipe, enc = _media_recipe(None, TextEncoderConfig(path="minilm", max_length=8),
                                TextEncoderConfig(path=str(bert), max_length=8))
    components = _export(enc, tmp_path / "export")
    assert components["text_encoders"]["minilm"] == {"mode": "reference", "path": "minilm",
                                                     "fingerprint": enc.text_config.encoders[0].fingerprint()}
    assert sorted(p.name for p in (tmp_path / "export" / "models" / "text_encoders").iterdir()) == ["bert"]
    resolved = MediaEncoders.resolve_exported(recipe, components, tmp_path / "export")
    assert resolved["model"]["text"]["encoders"][0] == recipe["model"]["text"]["encoders"][0]
    with pytest.raises(ConfigError, match=r"references \['minilm'\] and bundles \['bert'\]"):
        MediaEncoders.resolve_exported(recipe, components, tmp_path / "export", {"bert": str(bert)})


def test_an_older_export_without_components_resolves_unchanged_and_other_tasks_take_no_encoder(tmp_path) -> None:
    from mmflow.tasks.toy2d import Toy2DTask

    recipe, _ = _media_recipe(None, TextEncoderConfig(path="minilm", max_length=8))
    assert MediaEncoders.resolve_exported(recipe, {}, tmp_path) == recipe
    assert Toy2DTask.resolve_exported({"name": "toy"}, {}, tmp_path) == {"name": "toy"}
    with pytest.raises(ConfigError, match="references no text encoder"):
        Toy2DTask.resolve_exported({"name": "toy"}, {}, tmp_path, {"minilm": "/x"})


def test_the_export_setting_changes_no_fingerprint(tmp_path: Path) -> None:
    bert = tiny_bert(tmp_path / "bert")
    prints = {TextEncoderConfig(path=str(bert), export=mode).fingerprint() for mode in ("auto", "copy", "reference")}
    assert len(prints) == 1
    assert export_mode(TextEncoderConfig(path=str(bert))) == "copy" and export_mode(TextEncoderConfig()) == "reference"
