"""One spec per modality (image, video, audio): see base.py. Importing this package registers them.

    from mmflow.modalities import get_modality
    get_modality("video").latent_axes   # 3
"""

from mmflow.modalities.base import MODALITIES, Modality, UnknownModality, get_modality, register_modality
from mmflow.modalities.image import ImageModality
from mmflow.modalities.video import VideoModality
from mmflow.modalities.audio import AudioModality  # noqa: I001  (registration order: image, video, audio)

__all__ = ["MODALITIES", "AudioModality", "ImageModality", "Modality", "UnknownModality", "VideoModality",
           "get_modality", "register_modality"]
