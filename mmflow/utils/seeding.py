"""Deterministic seeds derived from several integers (seed, step, epoch, index, a stream tag).

Every random choice that must repeat on resume and not depend on how work is split (data order,
crops, bad-item replacements, per-step noise) seeds a fresh `torch.Generator` with `mix_seed(...)`
of the values that identify it, e.g. `torch.Generator().manual_seed(mix_seed(seed, 0xDA7A, epoch))`.
The constant tag keeps the streams of different users apart.
"""

from __future__ import annotations

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix_seed(*values: int) -> int:
    """A non-negative 63-bit generator seed that depends on every value and their order."""
    # splitmix-style hashing so nearby (seed, step) pairs give unrelated generator seeds
    h = _GOLDEN
    for v in values:
        h ^= (v + _GOLDEN + (h << 6) + (h >> 2)) & _MASK64
        h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    return h & 0x7FFFFFFFFFFFFFFF
