"""Aspect-ratio buckets and the single-bucket batch sampler."""

from __future__ import annotations

import itertools
import math

import pytest

from mmflow.data.buckets import BucketBatchSampler, assign_bucket, make_buckets


@pytest.mark.parametrize("size, multiple", [(64, 16), (256, 16), (512, 64), (1024, 16)])
def test_buckets_have_about_the_same_area_and_legal_sides(size, multiple):
    buckets = make_buckets(size, multiple, 0.5, 2.0)
    assert (size, size) in buckets
    assert len(buckets) == len(set(buckets)) >= 3
    for h, w in buckets:
        assert h % multiple == 0 and w % multiple == 0
        assert 0.5 <= w / h <= 2.0
        assert abs(h * w / size**2 - 1) < 0.2
        assert (w, h) in buckets  # portrait and landscape alike
    aspects = [w / h for h, w in buckets]
    assert aspects == sorted(aspects)


def test_assign_bucket_picks_the_nearest_aspect():
    buckets = make_buckets(64)
    assert buckets == [(96, 48), (80, 48), (64, 64), (48, 80), (48, 96)]
    assert buckets[assign_bucket(500, 500, buckets)] == (64, 64)
    assert buckets[assign_bucket(100, 150, buckets)] == (48, 80)   # 1.5 is nearer 1.67 than 1 (log scale)
    assert buckets[assign_bucket(100, 190, buckets)] == (48, 96)
    assert buckets[assign_bucket(400, 100, buckets)] == (96, 48)   # beyond the range: the extreme bucket
    assert buckets[assign_bucket(110, 100, buckets)] == (64, 64)
    for h, w in buckets:  # a bucket's own shape maps to itself
        assert buckets[assign_bucket(h * 3, w * 3, buckets)] == (h, w)


def bucket_of_items() -> list[int]:
    return [0] * 11 + [1] * 3 + [2] * 1 + [3] * 7  # uneven, one bucket smaller than a batch


def test_batches_come_from_one_bucket_and_cover_every_item_each_epoch():
    bucket_of = bucket_of_items()
    s = BucketBatchSampler(bucket_of, local_batch=4, seed=0)
    assert s.batches_per_epoch == 3 + 1 + 1 + 2
    for epoch in range(3):
        seen = set()
        for k in range(epoch * s.batches_per_epoch, (epoch + 1) * s.batches_per_epoch):
            keys = s.indices(k)
            assert len(keys) == 4
            assert {e for _, e in keys} == {epoch}
            assert len({bucket_of[i] for i, _ in keys}) == 1 and bucket_of[keys[0][0]] == s.bucket(k)
            seen |= {i for i, _ in keys}
        assert seen == set(range(len(bucket_of)))
    orders = [[s.indices(k) for k in range(e * 7, e * 7 + 7)] for e in range(2)]
    assert [[i for i, _ in b] for b in orders[0]] != [[i for i, _ in b] for b in orders[1]]  # reshuffled


def test_sampler_is_deterministic_and_resumes_exactly():
    a = BucketBatchSampler(bucket_of_items(), 4, seed=5)
    b = BucketBatchSampler(bucket_of_items(), 4, seed=5)
    c = BucketBatchSampler(bucket_of_items(), 4, seed=6)
    first = list(itertools.islice(iter(a), 20))
    assert first == list(itertools.islice(iter(b), 20))
    assert first != list(itertools.islice(iter(c), 20))
    resumed = BucketBatchSampler(bucket_of_items(), 4, seed=5, start=9)
    assert list(itertools.islice(iter(resumed), 11)) == first[9:]


def test_ranks_share_the_bucket_and_split_the_global_batch():
    bucket_of = bucket_of_items()
    one = BucketBatchSampler(bucket_of, local_batch=4, seed=1)
    ranks = [BucketBatchSampler(bucket_of, local_batch=2, seed=1, rank=r, world_size=2) for r in range(2)]
    for k in range(15):
        r0, r1 = ranks[0].indices(k), ranks[1].indices(k)
        assert ranks[0].bucket(k) == ranks[1].bucket(k) == one.bucket(k)
        assert r0 + r1 == one.indices(k)  # two processes with B read what one process with 2B reads
        assert len({bucket_of[i] for i, _ in r0 + r1}) == 1
    assert math.isclose(one.epoch_of(14), 2.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        BucketBatchSampler([], 2, 0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([0], 2, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="smaller than the side multiple"):
        make_buckets(8, 16)
