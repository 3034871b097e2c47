"""The sharded safetensors cache: round trip, data-parallel writing, staleness with reasons, atomicity."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from mmflow.data.cache import CachedDataset, CacheOrder, CacheWriter, StaleCacheError, cache_problem, read_index

DESCRIBE = {"tokenizer": "abc", "text": {"encoder": "minilm", "max_length": 16}, "files": {"a.png": [10, 1.0]}}


def _items(n: int) -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {i: {"latent_mean": torch.randn(4, 2 + i % 2, 2, generator=g), "text_mask": torch.rand(5, generator=g) > 0.5}
            for i in range(n)}


def _write(folder, items, describe=DESCRIBE, world=1, shard_bytes=64):
    writers = [CacheWriter(folder, describe, rank=r, world_size=world, shard_bytes=shard_bytes) for r in range(world)]
    writers[0].begin()
    for i, tensors in items.items():
        writers[i % world].add(i, tensors)  # round-robin, as ranks split a dataset
    for w in writers:
        w.close()
    return writers[0].finalize()


@pytest.mark.parametrize("world", [1, 3])
def test_round_trip_over_several_shards_and_ranks(tmp_path, world):
    items = _items(7)
    folder = _write(tmp_path / "cache", items, world=world)
    index = read_index(folder)
    assert index["num_items"] == 7 and len(set(index["items"].values())) > world  # small shards: several per rank
    ds = CachedDataset(folder, DESCRIBE)
    assert len(ds) == 7
    for k in range(7):
        item = ds[k]
        assert item["index"] == k
        for name, t in items[k].items():
            assert torch.equal(item[name], t) and item[name].dtype == t.dtype


def test_a_changed_input_makes_the_cache_stale_and_names_what_changed(tmp_path):
    folder = _write(tmp_path / "cache", _items(2))
    assert cache_problem(folder, DESCRIBE) is None
    changed = {**DESCRIBE, "text": {"encoder": "minilm", "max_length": 32}}
    problem = cache_problem(folder, changed)
    assert "stale" in problem and "text.max_length" in problem and "tokenizer" not in problem
    with pytest.raises(StaleCacheError, match="text.max_length"):
        CachedDataset(folder, changed)
    more_files = {**DESCRIBE, "files": {"a.png": [10, 1.0], "b.png": [3, 2.0]}}
    assert "files.b.png" in cache_problem(folder, more_files)


def test_keys_every_rank_is_independent_of_are_left_out_of_the_comparison(tmp_path):
    seeded = {**DESCRIBE, "seed": 0}
    for named_by, independent in (((0, 1), True), ((0,), False)):  # a rank that names nothing keeps the key
        folder = tmp_path / str(len(named_by))
        writers = [CacheWriter(folder, seeded, rank=r, world_size=2) for r in range(2)]
        writers[0].begin()
        for i, tensors in _items(4).items():
            writers[i % 2].add(i, tensors)
        for r in named_by:
            writers[r].independent_of(["seed"])
        for w in writers:
            w.close()
        writers[0].finalize()
        problem = cache_problem(folder, {**DESCRIBE, "seed": 1})
        assert (problem is None) if independent else ("changed: seed" in problem), (named_by, problem)
        assert read_index(folder)["independent_of"] == (["seed"] if independent else [])
        # the other keys still count
        assert "changed: tokenizer" in cache_problem(folder, {**seeded, "tokenizer": "xyz"})


def test_missing_and_partial_caches_are_refused(tmp_path):
    assert "run `mmflow prepare`" in cache_problem(tmp_path / "nothing", DESCRIBE)
    w = CacheWriter(tmp_path / "cache", DESCRIBE, shard_bytes=1)
    w.begin()
    w.add(0, _items(1)[0])
    w.close()  # crashed before finalize: only the temporary folder exists
    assert "no cache" in cache_problem(tmp_path / "cache", DESCRIBE)


def test_a_crashed_rebuild_keeps_the_previous_cache(tmp_path):
    folder = _write(tmp_path / "cache", _items(3))
    w = CacheWriter(folder, {**DESCRIBE, "tokenizer": "new"}, world_size=2)
    w.begin()
    w.add(0, _items(1)[0])
    w.close()
    with pytest.raises(StaleCacheError, match="rank 1 did not finish"):
        w.finalize()
    assert len(CachedDataset(folder, DESCRIBE)) == 3  # the old cache is untouched
    _write(folder, _items(4), describe={**DESCRIBE, "tokenizer": "new"})  # a clean rebuild replaces it
    assert len(CachedDataset(folder, {**DESCRIBE, "tokenizer": "new"})) == 4


def test_bad_additions_are_refused(tmp_path):
    w = CacheWriter(tmp_path / "cache", DESCRIBE)
    w.begin()
    w.add(0, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="item 0 was added twice"):
        w.add(0, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="must not contain '/'"):
        w.add(1, {"a/b": torch.zeros(1)})


def test_skipped_items_are_recorded_and_the_dataset_works_in_workers(tmp_path):
    w = CacheWriter(tmp_path / "cache", DESCRIBE)
    w.begin()
    for i, t in _items(4).items():
        w.add(i, t)
    w.add_skipped("bad.png", "zero-byte file")
    w.close()
    w.finalize()
    assert read_index(tmp_path / "cache")["skipped"] == [["bad.png", "zero-byte file"]]
    ds = CachedDataset(tmp_path / "cache", DESCRIBE)
    ds[0]  # opens a shard handle, which must not travel to workers
    pickle.dumps(ds)
    loaded = [b["index"].tolist() for b in DataLoader(ds, batch_size=2, num_workers=2,
                                                       collate_fn=lambda xs: {"index": torch.tensor([x["index"] for x in xs])})]
    assert sorted(sum(loaded, [])) == [0, 1, 2, 3]


def test_cache_order_maps_raw_batches_to_cache_positions_skipping_bad_items() -> None:
    # items 0..5, item 2 and item 5 bad (not cached): the cache holds 0, 1, 3, 4 at positions 0..3
    raw = [[(0, 0), (2, 0)], [(5, 1), (3, 1)], [4, 1]]  # (index, epoch) keys, or plain indices (4 and 1)
    order = CacheOrder(raw, cached=[0, 1, 3, 4], num_items=6)
    # a bad index reads the next cached one after it, wrapping around: 2 -> 3, 5 -> 0
    assert list(order) == [[0, 2], [0, 2], [3, 1]]
