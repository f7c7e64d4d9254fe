"""Metrics: feature distances (FID, KID, precision/recall), feature extractors, the shapes oracle
and caption alignment scored by it."""

from gan_t2i.metrics.alignment import (
    bootstrap_ci,
    caption_scores,
    chance_levels,
    oracle_caption_score,
    r_precision,
    r_precision_hits,
    shapes_alignment,
    shapes_r_precision,
    summarize,
)
from gan_t2i.metrics.extractors import (
    FEATURE_EXTRACTORS,
    FeatureExtractor,
    MetricUnavailable,
    build_feature_extractor,
    find_inception_weights,
)
from gan_t2i.metrics.frechet import feature_stats, frechet_distance, kid, precision_recall
from gan_t2i.metrics.images import to_float_images, to_uint8_images
from gan_t2i.metrics.oracle import (
    ShapesOracle,
    load_or_train_oracle,
    load_oracle,
    train_oracle,
)

__all__ = [
    "FEATURE_EXTRACTORS",
    "FeatureExtractor",
    "MetricUnavailable",
    "ShapesOracle",
    "bootstrap_ci",
    "build_feature_extractor",
    "caption_scores",
    "chance_levels",
    "feature_stats",
    "find_inception_weights",
    "frechet_distance",
    "kid",
    "load_oracle",
    "load_or_train_oracle",
    "oracle_caption_score",
    "precision_recall",
    "r_precision",
    "r_precision_hits",
    "shapes_alignment",
    "shapes_r_precision",
    "summarize",
    "to_float_images",
    "to_uint8_images",
    "train_oracle",
]
