"""Probe classifiers: small models of our own data's attributes (see base.py), shipped in
checkpoints/probes/; importing this package registers their model types."""

from mmflow.metrics.probes.base import Probe, ProbeConfig, ProbeInputError, load_probe
from mmflow.metrics.probes.digits import DigitsProbe
from mmflow.metrics.probes.emoji_video import EmojiVideoProbe
from mmflow.metrics.probes.music import MusicProbe
from mmflow.metrics.probes.shapes import ShapesProbe, score_shapes
from mmflow.metrics.probes.tempo import estimate_tempo, tempo_errors
from mmflow.metrics.probes.tones import TonesProbe, score_tones

__all__ = ["DigitsProbe", "EmojiVideoProbe", "MusicProbe", "Probe", "ProbeConfig", "ProbeInputError", "ShapesProbe",
           "TonesProbe", "estimate_tempo", "load_probe", "score_shapes", "score_tones", "tempo_errors"]
