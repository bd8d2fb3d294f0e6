"""Shard selection: ``data.num_shards`` / ``data.shard`` cut the selected ids into the one-process run's batches and
give each shard a contiguous range of whole batches; together the shards are the selection, in order, once each.
Bad values are refused when the config is composed."""

from __future__ import annotations

import pytest

from clipure_lit.data.datasets import shard_batches, shard_ids
from clipure_lit.errors import ConfigError

from conftest import needs_shared_cifar, tiny_cfg


@pytest.mark.parametrize("count,batch,shards", [(20, 4, 2), (21, 4, 3), (10, 2, 5), (7, 3, 3), (64, 16, 4), (5, 8, 1)])
def test_shards_are_a_deterministic_partition_into_whole_batches(count, batch, shards):
    ids = [7 * i + 3 for i in range(count)]  # any order of any ids
    parts = [shard_ids(ids, batch, shards, k) for k in range(shards)]
    assert sum(parts, []) == ids  # every id once, in the one-process order
    assert parts == [shard_ids(list(ids), batch, shards, k) for k in range(shards)]  # deterministic
    batches = [ids[i:i + batch] for i in range(0, count, batch)]  # the one-process run's batches
    ranges = shard_batches(len(batches), shards)
    for part, span in zip(parts, ranges):
        assert part and part == sum(batches[span.start:span.stop], [])  # whole batches, a contiguous range
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1  # balanced
    assert shard_ids(ids, batch, 1, None) == ids


def test_more_shards_than_batches_is_refused():
    with pytest.raises(ConfigError, match=r"data.num_shards=3 is more than the 2 batch\(es\)"):
        shard_ids(list(range(8)), 4, 3, 0)


@pytest.mark.parametrize("overrides,message", [
    (["data.num_shards=0"], r"data.num_shards=0 must be a positive number of shards"),
    (["data.num_shards=2"], r"data.num_shards=2 without data.shard"),
    (["data.num_shards=2", "data.shard=2"], r"data.shard=2 is outside \[0, 2\)"),
    (["data.num_shards=2", "data.shard=-1"], r"data.shard=-1 is outside"),
    (["data.num_shards=5", "data.shard=0"], r"data.num_shards=5 is more than the 4 batch\(es\) of data.num_samples=64"),
])
def test_bad_shard_values_are_refused_when_the_config_is_composed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(*overrides)


@needs_shared_cifar
def test_the_data_module_evaluates_its_shard_of_the_whole_selection():
    from clipure_lit.data.datamodule import ZeroShotDataModule

    whole = ZeroShotDataModule(tiny_cfg("data.batch_size=16").data)  # 64 images: 4 batches
    parts = [ZeroShotDataModule(tiny_cfg("data.num_shards=3", f"data.shard={k}").data) for k in range(3)]
    assert [len(p.sample_ids) for p in parts] == [16, 16, 32]
    assert sum((p.sample_ids for p in parts), []) == whole.sample_ids
    assert all(p.selected_ids == whole.sample_ids for p in parts)
    assert len({p.ids_hash() for p in parts} | {whole.ids_hash()}) == 4  # environment.json tells the shards apart
