import torch
from torch import nn

from mmflow.train.ema import EMA


def test_ema_tracks_the_exponential_average_and_leaves_the_model_alone():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    expected = torch.zeros(2, 2)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        expected = 0.9 * expected + 0.1 * value
    torch.testing.assert_close(ema.shadow.weight, expected)
    assert not ema.shadow.weight.requires_grad
    assert torch.all(model.weight == 3.0)


def test_warmup_starts_with_a_small_decay():
    ema = EMA(nn.Linear(1, 1), decay=0.999, warmup=True)
    assert ema.current_decay() == 0.1  # (1 + 0) / (10 + 0)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_frozen_parameters_are_shared_not_copied_and_only_trainable_ones_are_averaged():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)  # e.g. a LoRA run's base weights
    ema = EMA(model, decay=0.5, warmup=False)
    assert ema.tracked == ["1.weight", "1.bias"]
    assert ema.shadow[0].weight is model[0].weight and ema.shadow[1].weight is not model[1].weight
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        start = ema.shadow[1].weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.shadow[1].weight, 0.5 * start + 1.0)
    assert not any(p.requires_grad for p in ema.shadow[1].parameters())
