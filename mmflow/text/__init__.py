"""Text conditioning: frozen transformers text encoders, their SD3-style combination and CFG dropout.

    from mmflow.text import TextConditioner, TextConditionerConfig, TextEncoderConfig

    cfg = TextConditionerConfig(encoders=[TextEncoderConfig(path="minilm", max_length=32, dropout=0.1)])
    cond = TextConditioner(cfg)
    emb = cond(["a smiling face"], generator=g)   # TextEmbedding: tokens (1, 32, 384), mask, pooled (1, 384)
    model_kwargs = dict(context_dim=cfg.out_width, pooled_dim=cfg.pooled_width)
"""

from mmflow.text.combine import (
                                 TextConditioner,
                                 TextConditionerConfig,
                                 combine_embeddings,
                                 combine_parts,
                                 drop_masks,
                                 drop_rows,
                                 zeros_like_null,
)
from mmflow.text.default import (
                                 DEFAULT_ENCODER,
                                 TextEncoderNotFound,
                                 default_encoder_path,
                                 is_default_name,
                                 resolve_encoder_path,
)
from mmflow.text.encoder import (
                                 TextEmbedding,
                                 TextEncoder,
                                 TextEncoderConfig,
                                 encoder_info,
)

__all__ = [
    "DEFAULT_ENCODER",
    "TextConditioner",
    "TextConditionerConfig",
    "TextEmbedding",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoderNotFound",
    "combine_embeddings",
    "combine_parts",
    "default_encoder_path",
    "drop_masks",
    "drop_rows",
    "encoder_info",
    "is_default_name",
    "resolve_encoder_path",
    "zeros_like_null",
]
