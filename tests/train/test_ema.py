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
