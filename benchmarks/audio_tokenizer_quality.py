"""An audio tokenizer's round trip on held-out clips (not a timing): multi-resolution STFT distance, log-mel
distance, and the pitch error of the reconstructions against the originals.

    tones   the tones test split (data/tones/test: held-out timbre-pattern-mode combinations): per note, the
            reconstruction's median pitch (YIN, mmflow/metrics/probes/tones.py) minus the original's, in cents
            (a tokenizer should move no note: ~0 cents); and the tones probe's accuracies on the reconstructions
    music   the last --music-held-out clips of ../shared/data/music16k (the tokenizer recipe's held-out items)

Each distance is printed beside that of silence (a useless tokenizer's floor to beat).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audio_tokenizer_quality.py checkpoints/tokenizers/audio
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor

import mmflow.builtin_models  # noqa: F401  (registers the tokenizer types)
from mmflow.metrics.probes.tones import analyse, score_tones
from mmflow.model_io import load_model
from mmflow.modalities import get_modality
from mmflow.tokenizers.losses import stft_distance

MEL_BINS = 64


def mel_distance(x_hat: Tensor, x: Tensor, sample_rate: int) -> float:
    """Mean |log-mel(x_hat) - log-mel(x)| over (B, 1, N) clips (1024-point STFT, hop 256, 64 bands)."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=MEL_BINS)
    return float((torch.log(mel(x_hat) + 1e-5) - torch.log(mel(x) + 1e-5)).abs().mean())


def note_matches(originals: Tensor, reconstructions: Tensor, sample_rate: int) -> list[list[tuple[float, bool] | None]]:
    """Per clip, per original note: None when no reconstructed note starts within one YIN frame (16 ms) of it,
    else (cents, reconstruction minus original; whether it starts in the very same frame)."""
    out = []
    for x, y in zip(originals, reconstructions):
        found = {s: m for s, _, m in analyse(y[0], sample_rate).notes}
        clip = []
        for s, _, m in analyse(x[0], sample_rate).notes:
            near = [(found[k], k == s) for k in (s, s - 1, s + 1) if k in found]
            clip.append((100.0 * (near[0][0] - m), near[0][1]) if near else None)
        out.append(clip)
    return out


def _cents_summary(notes: list[tuple[float, bool] | None]) -> dict[str, object]:
    """Counts and |cents| percentiles of one group of note matches."""
    cents = np.abs([n[0] for n in notes if n is not None])
    return {"notes": len(notes), "matched": int(len(cents)), "same_frame": sum(1 for n in notes if n and n[1]),
            "median_cents": round(float(np.median(cents)), 2) if len(cents) else None,
            "p90_cents": round(float(np.percentile(cents, 90)), 2) if len(cents) else None}


def read_clips(folder: Path, names: list[str], sample_rate: int) -> Tensor:
    audio = get_modality("audio")
    return torch.stack([audio.read_whole(folder / n, sample_rate, 1)[0] for n in names])  # (B, 1, N)


def round_trip(vae: torch.nn.Module, x: Tensor, batch: int = 16) -> Tensor:
    with torch.no_grad():
        return torch.cat([vae.decode(vae.encode(x[i: i + batch]).mean, like_shape=x[i: i + batch].shape).clamp(-1, 1)
                          for i in range(0, len(x), batch)])


def report(name: str, x: Tensor, y: Tensor, sample_rate: int) -> dict[str, float]:
    silence = torch.zeros_like(x)
    out = {"clips": len(x), "stft_distance": round(float(stft_distance(y, x).mean()), 4),
           "stft_distance_silence": round(float(stft_distance(silence, x).mean()), 4),
           "mel_distance": round(mel_distance(y, x, sample_rate), 4),
           "mel_distance_silence": round(mel_distance(silence, x, sample_rate), 4)}
    print(name, json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tokenizer", help="an audio tokenizer folder (config.json + model.safetensors)")
    p.add_argument("--tones", default="data/tones/test")
    p.add_argument("--music", default="../shared/data/music16k")
    p.add_argument("--music-held-out", type=int, default=16)
    args = p.parse_args()
    vae = load_model(args.tokenizer).eval()
    rate = vae.config.sample_rate
    results: dict[str, object] = {"tokenizer": args.tokenizer}
    tones = Path(args.tones)
    if (tones / "metadata.jsonl").is_file():
        rows = [json.loads(line) for line in (tones / "metadata.jsonl").read_text().splitlines() if line.strip()]
        x = read_clips(tones, [r["file_name"] for r in rows], rate)
        y = round_trip(vae, x)
        results["tones"] = report("tones", x, y, rate)
        matches = note_matches(x, y, rate)
        cents = np.asarray([n[0] for clip in matches for n in clip if n is not None])
        found = len(cents) > 0  # none: no reconstructed note starts where an original one does (a pitchless decoder)
        by_timbre: dict[str, list] = {}
        for row, clip in zip(rows, matches):
            by_timbre.setdefault(row.get("timbre", "?"), []).extend(clip)
        results["tones"].update({"notes": int(len(cents)),
                                 "pitch_error_median_cents": round(float(np.median(np.abs(cents))), 2) if found else None,
                                 "pitch_error_p95_cents": round(float(np.percentile(np.abs(cents), 95)), 2) if found else None,
                                 "probe_on_reconstructions": {k: round(float(v), 3) for k, v in
                                                              score_tones(y, [r["text"] for r in rows]).items()
                                                              if k not in ("items", "n", "n_mode")},
                                 "notes_by_timbre": {t: _cents_summary(v) for t, v in sorted(by_timbre.items())}})
    music = Path(args.music)
    if (music / "metadata.jsonl").is_file():
        rows = [json.loads(line) for line in (music / "metadata.jsonl").read_text().splitlines() if line.strip()]
        held = rows[-args.music_held_out:]
        x = read_clips(music, [r["file_name"] for r in held], rate)
        results["music16k_held_out"] = report("music16k", x, round_trip(vae, x), rate)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
