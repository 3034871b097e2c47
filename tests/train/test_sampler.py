from mmflow.train.sampler import StreamBatchSampler


def _rows(n, batch, world, accum, steps, seed=0):
    """Rows each (step, micro, rank) reads, as the trainer asks for them."""
    out = {}
    for rank in range(world):
        s = StreamBatchSampler(n, batch, rank, world, seed)
        for step in range(steps):
            for micro in range(accum):
                out[(step, micro * world + rank)] = s.indices(step * accum + micro)
    return out


def _global_batches(rows, steps):
    return [sum((rows[k] for k in sorted(rows) if k[0] == step), []) for step in range(steps)]


def test_the_global_batch_does_not_depend_on_the_split():
    one = _global_batches(_rows(100, 16, 1, 1, 10), 10)
    assert one == _global_batches(_rows(100, 8, 2, 1, 10), 10)
    assert one == _global_batches(_rows(100, 8, 1, 2, 10), 10)
    assert one == _global_batches(_rows(100, 4, 2, 2, 10), 10)


def test_each_epoch_is_a_permutation_and_epochs_differ():
    s = StreamBatchSampler(30, 10, 0, 1, seed=3)
    e0 = sum((s.indices(k) for k in range(3)), [])
    e1 = sum((s.indices(k) for k in range(3, 6)), [])
    assert sorted(e0) == list(range(30)) and sorted(e1) == list(range(30))
    assert e0 != e1


def test_resume_start_continues_the_same_stream():
    full = StreamBatchSampler(50, 7, 0, 1, seed=1)
    resumed = StreamBatchSampler(50, 7, 0, 1, seed=1, start=5)
    it = iter(resumed)
    assert [next(it) for _ in range(4)] == [full.indices(k) for k in range(5, 9)]


def test_overfit_cycles_over_the_same_examples():
    s = StreamBatchSampler(100, 8, 0, 1, seed=0, overfit=3)
    seen = {i for k in range(20) for i in s.indices(k)}
    assert len(seen) == 3
    one = StreamBatchSampler(100, 8, 0, 1, seed=0, overfit=1)
    assert len({i for k in range(5) for i in one.indices(k)}) == 1
