"""gpt2/tf/cache.py's KVCache against plain numpy: the growing and static write rules, a traced position under
XLA, transformers' legacy formats, beam reordering and cropping. (The model-level equalities -- decoding through
the cache equals a full pass -- are in test_tf_models.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_tf

pytestmark = [requires_tf]

tf = pytest.importorskip("tensorflow")

from gpt2.tf.cache import KVCache  # noqa: E402

B, H, HS = 2, 3, 4


def kv(T, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, H, T, HS)).astype(np.float32), rng.normal(size=(B, H, T, HS)).astype(np.float32)


def test_growing_cache_concatenates_per_layer():
    cache = KVCache()
    k0, v0 = kv(3, 0)
    for layer in range(2):
        k, v = cache.update(layer, tf.constant(k0), tf.constant(v0))
        np.testing.assert_array_equal(k.numpy(), k0)
    cache.advance(3)
    k1, v1 = kv(1, 1)
    k, v = cache.update(1, tf.constant(k1), tf.constant(v1))
    np.testing.assert_array_equal(v.numpy(), np.concatenate([v0, v1], axis=2))
    assert cache.keys[1] is k and len(cache) == 2 and cache.get_seq_length() == 3 and cache.capacity is None
    with pytest.raises(ValueError, match="only a static cache"):
        cache.at(tf.constant(0))


def test_static_cache_writes_at_its_length_and_at_a_position():
    cache = KVCache.static_cache(1, B, H, 6, HS)
    assert cache.capacity == 6 and cache.keys[0].shape == (B, H, 6, HS)
    k0, v0 = kv(2, 0)
    k, v = cache.update(0, tf.constant(k0), tf.constant(v0))
    assert k.shape == (B, H, 2, HS)  # what it holds so far
    cache.advance(2)
    np.testing.assert_array_equal(cache[0][1].numpy(), v0)
    k1, v1 = kv(1, 1)
    k, v = cache.at(tf.constant(4)).update(0, tf.constant(k1), tf.constant(v1))
    assert k.shape == (B, H, 6, HS)  # the whole buffer, written at slot 4, slot 3 still zero
    expected = np.zeros((B, H, 6, HS), np.float32)
    expected[:, :, :2], expected[:, :, 4:5] = k0, k1
    np.testing.assert_array_equal(k.numpy(), expected)
    assert cache.keys[0] is k  # the view shares the lists: the owner sees the new buffer
    k2, v2 = kv(2, 2)
    cache.at(tf.constant([5, 2])).update(0, tf.constant(k2), tf.constant(v2))  # a vector of slots
    expected[:, :, 5], expected[:, :, 2] = k2[:, :, 0], k2[:, :, 1]
    np.testing.assert_array_equal(cache.keys[0].numpy(), expected)
    with pytest.raises(ValueError, match="static KV cache holds 6"):
        cache.update(0, *map(tf.constant, kv(5, 3)))


def test_a_cache_from_loop_buffers_under_xla():
    """What a compiled decoding loop does: buffers in, KVCache(...).at(position), the new buffers out; one trace."""

    @tf.function(jit_compile=True)
    def write(keys, values, k, v, position):
        cache = KVCache(keys, values, static=True).at(position)
        cache.update(0, k, v)
        return cache.keys, cache.values

    empty = KVCache.static_cache(1, B, H, 5, HS)
    keys, values = empty.keys, empty.values
    expected = np.zeros((B, H, 5, HS), np.float32)
    for t in range(5):
        k, v = kv(1, t)
        keys, values = write(keys, values, tf.constant(k), tf.constant(v), tf.constant(t))
        expected[:, :, t:t + 1] = v
    np.testing.assert_array_equal(values[0].numpy(), expected)
    assert write.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError, match="2 key buffers but 1 value"):
        KVCache(keys * 2, values, static=True)


def test_legacy_formats_both_ways():
    k0, v0 = kv(3, 0)
    torch_style = ((k0, v0), (k0 + 1, v0 + 1))
    tf_style = tuple(np.stack(pair) for pair in torch_style)  # transformers' TF: (2, B, nh, T, hs) per layer
    for past in (torch_style, tf_style):
        cache = KVCache.from_legacy_cache(past)
        assert len(cache) == 2 and cache.get_seq_length() == 3
        legacy = cache.to_legacy_cache()
        np.testing.assert_array_equal(legacy[1][1].numpy(), v0 + 1)
    cross = KVCache.from_legacy_cache(((k0, v0, k0[:, :, :1], v0[:, :, :1]),))
    assert cross.cross(0)[0].shape == (B, H, 1, HS) and len(cross.to_legacy_cache()[0]) == 4
    with pytest.raises(ValueError, match="each layer must hold"):
        KVCache.from_legacy_cache(((k0,),))
    with pytest.raises(ValueError, match="TF stack"):
        KVCache.from_legacy_cache((np.stack([k0, v0, k0]),))
    with pytest.raises(ValueError, match="out of order"):
        KVCache().set_cross(1, tf.constant(k0), tf.constant(v0))


def test_reorder_and_crop():
    k0, v0 = kv(4, 0)
    cache = KVCache.from_legacy_cache(((k0, v0),))
    cache.reorder_cache(tf.constant([1, 1]))
    np.testing.assert_array_equal(cache.keys[0].numpy(), k0[[1, 1]])
    cache.crop(2)
    assert cache.get_seq_length() == 2 and cache.keys[0].shape[2] == 2
    static = KVCache.static_cache(1, B, H, 6, HS)
    static.advance(5)
    static.crop(3)
    assert static.get_seq_length() == 3 and static.capacity == 6 and static[0][0].shape[2] == 3


def test_a_traced_model_returns_its_output_class_and_leaves_the_callers_cache_alone():
    """tf.function(model): outputs and the cache cross the function boundary (TF's nest protocol), and a cache
    given back is extended in a new cache, never modified (tf.function refuses calls that modify their arguments;
    transformers' TF models return new presents)."""
    from gpt2.common.config import GPT2Config
    from gpt2.tf import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=11, n_positions=7))
    traced = tf.function(model)
    first = traced(tf.constant([[1, 2, 3]]))
    assert type(first).__name__ == "CausalLMOutputWithCrossAttentions"
    assert isinstance(first.past_key_values, KVCache) and first.past_key_values.get_seq_length() == 3
    second = traced(tf.constant([[4]]), past_key_values=first.past_key_values)
    assert first.past_key_values.get_seq_length() == 3 and second.past_key_values.get_seq_length() == 4
    full = model(tf.constant([[1, 2, 3, 4]])).logits[:, -1]
    np.testing.assert_allclose(second.logits[:, -1].numpy(), full.numpy(), atol=1e-6)
