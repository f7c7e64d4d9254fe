"""Text side: a frozen sentence encoder and the on-disk caption-embedding cache.

Importing this package is cheap: sentence-transformers (and torch) load only when a
`SentenceEncoder` is built.
"""

from gan_t2i.text.cache import (
    EmbeddingCache,
    aligned_stats_path,
    captions_hash,
    load_aligned,
    write_aligned,
)
from gan_t2i.text.encoder import (
    MODEL_ALIASES,
    SentenceEncoder,
    bundled_model_path,
    model_identity,
    resolve_model,
)

__all__ = [
    "MODEL_ALIASES",
    "EmbeddingCache",
    "SentenceEncoder",
    "aligned_stats_path",
    "bundled_model_path",
    "captions_hash",
    "load_aligned",
    "model_identity",
    "resolve_model",
    "write_aligned",
]
