"""The built-in model types: importing this module registers every one of them in mmflow.model_io.

mmflow.model_io (the model-folder format) knows no model package, so code that loads a folder by
the type name in its config.json, without having imported the class, imports this first: the
sampling pipeline, for one.

    import mmflow.builtin_models  # noqa: F401
    vae = load_model("vae/")   # ImageVAE, VideoVAE, ... whichever its config.json names
"""

import mmflow.models  # noqa: F401  (MM-DiT, toy MLP velocity)
import mmflow.text.token_text  # noqa: F401  (the word-level text embedder)
import mmflow.tokenizers  # noqa: F401  (image / video / audio VAEs, the patch discriminator)
