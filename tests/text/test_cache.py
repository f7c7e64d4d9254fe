"""EmbeddingCache: incremental, crash-safe, keyed by model identity; aligned files and stats."""

import json

import numpy as np
import pytest

from gan_t2i.text.cache import (
    EmbeddingCache,
    aligned_stats_path,
    captions_hash,
    load_aligned,
    write_aligned,
)
from gan_t2i.utils import GanT2IError, text_hash

DIM = 8
IDENTITY = {"name": "test/fake-encoder", "source": "test", "max_length": None, "normalize": True}
CAPTIONS = [
    "a red circle",
    "a big blue square at the bottom right",
    "a green triangle",
    "a small yellow star in the middle",
    "a red circle",  # duplicate
]


class FakeEncoder:
    """Same interface as SentenceEncoder: deterministic unit vectors from the text; logs calls."""

    dim = DIM

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of a build
        self.calls.append(list(texts))
        return np.stack([_vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    def encode_tokens(self, texts, *, pad_to=None):
        pooled = self.encode(texts)
        width = pad_to or max(len(t.split()) + 2 for t in texts)
        tokens = np.zeros((len(texts), width, DIM), np.float32)
        mask = np.zeros((len(texts), width), bool)
        for i, text in enumerate(texts):
            n = min(width, len(text.split()) + 2)
            tokens[i, :n] = [_vector(f"{text}#{j}") for j in range(n)]
            mask[i, :n] = True
        return pooled, tokens, mask

    @property
    def encoded(self) -> list[str]:
        return [t for batch in self.calls for t in batch]


class Factory:
    """Encoder factory that counts how often the cache asks for an encoder."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.encoders: list[FakeEncoder] = []

    def __call__(self) -> FakeEncoder:
        self.encoders.append(FakeEncoder(**self.kwargs))
        return self.encoders[-1]


def _vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(int(text_hash(text), 16))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_build_encodes_unique_captions_once_sorted_by_length(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    factory = Factory()
    assert cache.missing(CAPTIONS) == CAPTIONS[:4]
    assert cache.build(CAPTIONS, factory, batch_size=3, progress=False) == 4
    (encoder,) = factory.encoders
    assert encoder.encoded == sorted(CAPTIONS[:4], key=lambda c: (len(c), c))
    assert [len(b) for b in encoder.calls] == [3, 1]
    assert len(cache) == 4 and "a red circle" in cache and cache.missing(CAPTIONS) == []
    assert cache.dim == DIM


def test_second_build_does_not_construct_encoder(tmp_path):
    factory = Factory()
    EmbeddingCache(tmp_path, IDENTITY).build(CAPTIONS, factory, progress=False)
    reopened = EmbeddingCache(tmp_path, IDENTITY)  # a later process
    assert reopened.build(CAPTIONS, factory, progress=False) == 0
    assert len(factory.encoders) == 1


def test_adding_a_caption_encodes_only_that_one(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    cache.build(CAPTIONS, Factory(), progress=False)
    factory = Factory()
    new = "a purple hexagon"
    assert cache.build(CAPTIONS + [new, new], factory, progress=False) == 1
    assert factory.encoders[0].encoded == [new]
    assert sorted(p.name for p in cache.path.glob("keys-*.json")) == [
        "keys-00000.json",
        "keys-00001.json",
    ]
    np.testing.assert_allclose(cache.lookup([new])[0], _vector(new), atol=1e-3)


def test_identity_and_settings_choose_the_folder(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    cache.build(CAPTIONS, Factory(), progress=False)
    other = EmbeddingCache(tmp_path, {**IDENTITY, "max_length": 64})
    assert other.path != cache.path and len(other) == 0
    assert other.missing(CAPTIONS) == CAPTIONS[:4]
    assert EmbeddingCache(tmp_path, IDENTITY, tokens=True).path != cache.path
    assert EmbeddingCache(tmp_path, dict(reversed(IDENTITY.items()))).path == cache.path
    assert cache.path.name.startswith("fake-encoder-")
    saved = json.loads((cache.path / "identity.json").read_text())
    assert saved["identity"] == IDENTITY and saved["settings"]["tokens"] is False


def test_lookup_order_dtype_and_missing(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    cache.build(CAPTIONS[:2], Factory(), progress=False)
    cache.build(CAPTIONS, Factory(), progress=False)  # second shard
    query = [CAPTIONS[3], CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]]
    out = cache.lookup(query)
    assert out.dtype == np.float16 and out.shape == (4, DIM)
    np.testing.assert_allclose(out, np.stack([_vector(c) for c in query]), atol=1e-3)
    with pytest.raises(KeyError, match="never seen"):
        cache.lookup([CAPTIONS[0], "never seen", "also never seen"])
    assert cache.lookup([]).shape == (0, DIM)


def test_same_captions_give_same_bytes_whatever_the_order(tmp_path):
    a = EmbeddingCache(tmp_path / "a", IDENTITY)
    b = EmbeddingCache(tmp_path / "b", IDENTITY)
    a.build(CAPTIONS, Factory(), batch_size=2, progress=False)
    b.build(CAPTIONS[::-1], Factory(), batch_size=2, progress=False)
    for name in ("shard-00000.npy", "keys-00000.json"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes()


def test_stray_shard_without_keys_is_ignored(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    cache.build(CAPTIONS[:2], Factory(), progress=False)
    # A build killed after writing its arrays but before its keys file:
    np.save(cache.path / "shard-00001.npy", np.full((3, DIM), 7, np.float16))
    reopened = EmbeddingCache(tmp_path, IDENTITY)
    assert len(reopened) == 2 and reopened.missing(CAPTIONS) == CAPTIONS[2:4]
    factory = Factory()
    assert reopened.build(CAPTIONS, factory, progress=False) == 2  # replaces the stray shard
    assert factory.encoders[0].encoded == sorted(CAPTIONS[2:4], key=len)
    np.testing.assert_allclose(reopened.lookup(CAPTIONS[2:4])[0], _vector(CAPTIONS[2]), atol=1e-3)


def test_killed_build_keeps_finished_shards_only(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY)
    with pytest.raises(KeyboardInterrupt):
        # Shards of 2 captions, batches of 1: the kill comes in the second shard's 2nd batch.
        cache.build(CAPTIONS, Factory(fail_after=3), batch_size=1, shard_size=2, progress=False)
    assert [p.name for p in cache.path.glob("keys-*.json")] == ["keys-00000.json"]
    assert not list(cache.path.glob("*.tmp"))
    reopened = EmbeddingCache(tmp_path, IDENTITY)
    assert len(reopened) == 2
    factory = Factory()
    assert reopened.build(CAPTIONS, factory, progress=False) == 2


def test_write_aligned_rows_and_stats(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache", IDENTITY)
    cache.build(CAPTIONS, Factory(), progress=False)
    out = tmp_path / "shapes" / "embeddings.npy"
    stats = write_aligned(cache, CAPTIONS, out, chunk_rows=2)  # chunked moments
    rows = np.load(out, mmap_mode="r")
    assert rows.dtype == np.float16 and rows.shape == (len(CAPTIONS), DIM)
    np.testing.assert_array_equal(rows, cache.lookup(CAPTIONS))
    exact = cache.lookup(CAPTIONS).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], exact.mean(0), atol=1e-12)
    np.testing.assert_allclose(stats["std"], exact.std(0), atol=1e-12)
    assert stats["captions_hash"] == captions_hash(CAPTIONS) != captions_hash(CAPTIONS[::-1])
    assert aligned_stats_path(out).name == "embeddings.stats.json"
    array, loaded = load_aligned(out)
    assert isinstance(array, np.memmap) and loaded["num_rows"] == len(CAPTIONS)
    np.testing.assert_allclose(loaded["mean"], exact.mean(0), atol=1e-6)
    with pytest.raises(KeyError, match="not cached"):
        write_aligned(cache, CAPTIONS + ["not cached"], tmp_path / "bad.npy")
    assert not (tmp_path / "bad.npy").exists()


def test_token_cache(tmp_path):
    cache = EmbeddingCache(tmp_path, IDENTITY, tokens=True, max_tokens=4)
    cache.build(CAPTIONS, Factory(), progress=False)
    tokens, mask = cache.lookup_tokens([CAPTIONS[2], CAPTIONS[0]])
    assert tokens.shape == (2, 4, DIM) and tokens.dtype == np.float16
    assert mask.tolist() == [[True] * 4, [True] * 4]  # 3 words + 2 specials, cut at 4
    expected = np.stack([_vector(f"{CAPTIONS[2]}#{j}") for j in range(4)])
    np.testing.assert_allclose(tokens[0], expected, atol=1e-3)
    cache.build(["red"], Factory(), progress=False)
    _, mask = cache.lookup_tokens(["red"])
    assert mask.tolist() == [[True, True, True, False]]
    plain = EmbeddingCache(tmp_path, IDENTITY)
    with pytest.raises(GanT2IError, match="tokens=True"):
        plain.lookup_tokens(CAPTIONS)


def test_encoder_with_wrong_shape_is_rejected(tmp_path):
    class Broken(FakeEncoder):
        def encode(self, texts):
            return np.zeros((len(texts) + 1, DIM), np.float32)

    cache = EmbeddingCache(tmp_path, IDENTITY)
    with pytest.raises(GanT2IError, match="shape"):
        cache.build(CAPTIONS, Broken, progress=False)
    assert len(EmbeddingCache(tmp_path, IDENTITY)) == 0


@pytest.fixture(scope="module")
def real_encoder():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        from gan_t2i.text.encoder import SentenceEncoder

        yield SentenceEncoder("minilm", batch_size=16)


def test_lookup_matches_direct_encoding_with_the_bundled_model(tmp_path, real_encoder):
    cache = EmbeddingCache(tmp_path, real_encoder.identity, tokens=True, max_tokens=8)
    assert cache.build(CAPTIONS, lambda: real_encoder, batch_size=2, progress=False) == 4
    pooled, tokens, mask = real_encoder.encode_tokens(CAPTIONS, pad_to=8)
    np.testing.assert_allclose(cache.lookup(CAPTIONS), pooled, atol=2e-3)
    cached_tokens, cached_mask = cache.lookup_tokens(CAPTIONS)
    np.testing.assert_array_equal(cached_mask, mask)
    np.testing.assert_allclose(cached_tokens, tokens, atol=5e-3, rtol=2e-3)
    assert cache.path.name.startswith("all-minilm-l6-v2-")


def test_lookup_sees_shards_added_by_another_process(tmp_path):
    reader = EmbeddingCache(tmp_path, IDENTITY)
    EmbeddingCache(tmp_path, IDENTITY).build(CAPTIONS, Factory(), progress=False)
    np.testing.assert_allclose(reader.lookup(CAPTIONS[:1])[0], _vector(CAPTIONS[0]), atol=1e-3)
