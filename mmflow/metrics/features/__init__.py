"""Feature extractors for distribution metrics: media -> vectors (see base.py); importing this
package registers the built-in ones."""

from mmflow.metrics.features.base import FEATURES, FeatureExtractor, UnknownFeatures, get_features, register_features
from mmflow.metrics.features import inception  # noqa: F401,E402  (registers "inception")
from mmflow.metrics.features import audio, clap, clip, pixels, video  # noqa: F401,E402  (register the others)
from mmflow.metrics.probes import features as _probe_features  # noqa: F401,E402  (registers "probe:<name>")

__all__ = ["FEATURES", "FeatureExtractor", "UnknownFeatures", "get_features", "register_features"]
