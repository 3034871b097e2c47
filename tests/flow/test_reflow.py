"""Reflow's pieces: the straightness measure, the pairs folder and the recipe checks."""

from __future__ import annotations

import pytest
import torch

from mmflow.config import ConfigError, from_dict
from mmflow.flow.config import FlowConfig
from mmflow.flow.reflow import PAIRS_INFO, ReflowPairs, pairs_problem, read_pairs, straightness, write_pairs


def test_straight_paths_score_zero_and_curved_ones_do_not() -> None:
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3.0, -1.0])
    straight = straightness(lambda x, t: target - x0, x0, 16)  # every path a line to its own target
    assert straight.relative < 1e-10 and straight.per_row.shape == (64,)
    assert straightness(lambda x, t: (target - x) / (1 - t[:, None] + 1e-3), x0, 16).relative < 1e-3  # OT paths
    rotation = straightness(lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1), x0, 32)  # one radian of a circle
    # the velocity turns by 1 rad along the path: its mean square deviation from the chord is ~1/12 of the chord's
    assert 0.06 < rotation.relative < 0.11, rotation.relative
    with pytest.raises(ValueError, match="steps must be >= 1"):
        straightness(lambda x, t: x, x0, 0)


def test_the_pairs_folder_round_trips_and_says_why_it_cannot_be_used(tmp_path) -> None:
    folder = tmp_path / "pairs"
    made_with = {"teacher": "abc", "pairs": 3, "guidance": 2.0}
    assert "holds no reflow pairs" in pairs_problem(folder, made_with)
    x0, x1 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    write_pairs(folder, x0, x1, ["a", None, "c"], made_with)
    assert pairs_problem(folder, made_with) is None
    assert "other settings (guidance)" in pairs_problem(folder, {**made_with, "guidance": 3.0})
    got0, got1, inputs = read_pairs(folder)
    assert torch.equal(got0, x0) and torch.equal(got1, x1) and inputs == ["a", None, "c"]
    data = ReflowPairs(folder)
    assert len(data) == 3 and data[0]["input"] == "a" and "input" not in data[1]
    assert torch.equal(data[2]["x1"], x1[2])
    (folder / PAIRS_INFO).write_text("{not json")
    assert "is not readable" in pairs_problem(folder, made_with)
    with pytest.raises(ValueError, match="one of each per pair"):
        write_pairs(folder, x0, x1[:2], ["a", "b", "c"], made_with)


@pytest.mark.parametrize("section, key, words", [
    ({"reflow": {"teacher": "t", "sample": {"stepz": 2}}}, "reflow.sample.stepz", "not a sample setting"),
    ({"reflow": {"teacher": "t", "sample": {"num_samples": 2}}}, "reflow.sample.num_samples", "flow.reflow.pairs"),
    ({"reflow": {"teacher": "t", "sample": {"solver": "sde"}}}, "reflow.sample.solver", "an ODE solver"),
    ({"reflow": {"teacher": "t"}, "objective": "meanflow"}, "reflow", "MeanFlow on pairs is not supported"),
])
def test_reflow_settings_are_checked(section, key, words) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        from_dict(FlowConfig, section)
    assert info.value.key == key, info.value.key
