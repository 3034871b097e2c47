"""Messages for prompts longer than a text encoder takes: one wording for every encoder kind.

Encoders truncate such prompts (the model has no positions past its limit); sampling logs these
messages so a user learns that the end of a prompt was not seen, and which setting limits it.
Prompts are numbered from 0, as in a sampling run's prompts.txt and prompt_index.

    truncation_warnings(["a cat", "a long ..."], [3, 41], 16, "text encoder 'minilm'", "its max_length")
    # ["prompt 1 ('a long ...') has 41 tokens; text encoder 'minilm' takes 16 (its max_length): truncated to 16"]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["preview", "truncation_warnings"]


def preview(prompt: str, width: int = 25) -> str:
    """The prompt, or its first characters and '...' when it is longer than width."""
    return prompt if len(prompt) <= width else prompt[: width - 3].rstrip() + "..."


def truncation_warnings(prompts: Sequence[str], counts: Sequence[int], limit: int, encoder: str, limit_name: str,
                        unit: str = "tokens") -> list[str]:
    """One message per prompt whose count exceeds limit; [] when all fit.

    counts: the length of each prompt in `unit`, untruncated; encoder names the encoder ("text encoder
    'minilm'"); limit_name names the setting that sets limit ("its max_length").
    """
    if len(prompts) != len(counts):
        raise ValueError(f"{len(prompts)} prompts but {len(counts)} counts")
    return [f"prompt {i} ({preview(p)!r}) has {n} {unit}; {encoder} takes {limit} ({limit_name}): truncated to {limit}"
            for i, (p, n) in enumerate(zip(prompts, counts)) if n > limit]
