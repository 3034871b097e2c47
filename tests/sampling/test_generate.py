"""The one sampling loop: CFG as one batched forward, chunks, decode, clamp, and the finiteness check."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from mmflow.errors import UserError
from mmflow.flow.paths import GaussianPath
from mmflow.flow.schedules import get_schedule
from mmflow.recipe import SampleConfig
from mmflow.sampling.generate import NonFiniteSamples, generate, seeded_noise

PATH = GaussianPath(get_schedule("condot"))
CFG = replace(SampleConfig(), solver="euler", steps=3, grid="uniform", shift=1.0, guidance=2.0)


class Counting(nn.Module):
    """v(x, t, cond) = cond - x (cond: (B, D) or None -> 0), recording each call's batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        self.batches.append(x.shape[0])
        assert t.shape == (x.shape[0],) and (cond is None or cond.shape[0] == x.shape[0])
        return (0 if cond is None else cond) - x


def _x0(b: int = 4, d: int = 3) -> Tensor:
    return seeded_noise((b, d), 0)[0]


def test_cfg_is_one_forward_of_2b_rows_per_step() -> None:
    model, cond = Counting(), torch.ones(4, 3)
    out = generate(model, _x0(), cond, torch.zeros(3), CFG, PATH)
    assert model.batches == [8] * 3 and out.nfe == 3


def test_guidance_one_runs_the_conditional_rows_only() -> None:
    model = Counting()
    generate(model, _x0(), torch.ones(4, 3), torch.zeros(3), CFG, PATH, guidance=1.0)
    assert model.batches == [4] * 3


def test_unconditional_passes_no_condition() -> None:
    model = Counting()
    out = generate(model, _x0(), None, None, CFG, PATH)
    assert model.batches == [4] * 3 and out.x.shape == (4, 3)


def test_chunks_give_the_same_samples_as_one_batch() -> None:
    cond = torch.arange(5.0).unsqueeze(1).expand(5, 3)
    whole = generate(Counting(), _x0(5), cond, torch.zeros(3), CFG, PATH).x
    model = Counting()
    parts = generate(model, _x0(5), cond, torch.zeros(3), CFG, PATH, batch_size=2, return_trajectory=True)
    assert model.batches == [4] * 3 + [4] * 3 + [2] * 3  # chunks of 2, 2, 1 rows, each doubled by CFG
    assert torch.equal(parts.x, whole) and parts.trajectory.shape == (4, 5, 3)


def test_decode_and_clamp_give_float32_on_cpu() -> None:
    cond = torch.full((4, 3), 5.0)
    raw = generate(Counting(), _x0(), cond, torch.zeros(3), CFG, PATH)
    out = generate(Counting(), _x0().double(), cond.double(), torch.zeros(3).double(), CFG, PATH,
                   decode=lambda z: 2 * z, clamp=True)
    assert out.x.dtype == torch.float32 and out.x.device.type == "cpu"
    assert raw.x.abs().max() > 1 and torch.equal(out.x, (2 * raw.x).clamp(-1, 1))


def test_a_non_finite_velocity_stops_at_that_step() -> None:
    class Blows(Counting):
        def forward(self, x, t, cond):
            v = super().forward(x, t, cond)
            return v / 0 if len(self.batches) == 2 else v

    model = Blows()
    with pytest.raises(NonFiniteSamples, match=r"non-finite velocity .* at t=0.333 \(euler x3, guidance=2\)"):
        generate(model, _x0(), torch.ones(4, 3), torch.zeros(3), CFG, PATH)
    assert model.batches == [8, 8]  # no further step ran
    out = generate(Blows(), _x0(), torch.ones(4, 3), torch.zeros(3), CFG, PATH, check_finite=False)
    assert not torch.isfinite(out.x).all()  # validation's choice: the samples come back as they are


def test_a_non_finite_decode_is_refused_even_when_clamped() -> None:
    with pytest.raises(NonFiniteSamples, match="after decoding") as info:
        generate(Counting(), _x0(), None, None, CFG, PATH, decode=lambda z: z * float("inf"), clamp=True)
    assert isinstance(info.value, UserError)


def test_seeded_noise_draws_each_row_from_its_own_seed() -> None:
    """The pipeline's rule: row i from seed + i, so a batch split any way draws the same noise."""
    x0, g = seeded_noise((3, 2, 2), 7)
    assert torch.equal(x0[1], torch.randn(2, 2, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(seeded_noise((2, 2, 2), 8)[0], x0[1:])
    # the generator for what follows (labels, SDE noise) is none of the rows' streams
    after = torch.randn(2, 2, generator=g)
    assert not any(torch.equal(after, torch.randn(2, 2, generator=torch.Generator().manual_seed(s))) for s in (7, 8, 9))


def test_validation_noise_is_the_pipelines() -> None:
    from mmflow.sampling.generate import row_noise

    assert torch.equal(row_noise((4,), [5, 6]), seeded_noise((2, 4), 5)[0])
