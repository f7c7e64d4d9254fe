"""CLIP score and CLIP-scored R-precision, where a CLIP model can be loaded (no downloads here).

The model is a local folder or a Hugging Face name already in the local cache; without either,
`load_clip` raises `MetricUnavailable` with one line saying what to do, and the evaluation
goes on with the metrics it can compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gan_t2i.metrics.alignment import r_precision_hits, summarize
from gan_t2i.metrics.extractors import MetricUnavailable
from gan_t2i.metrics.images import Images, to_uint8_images

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


@dataclass
class ClipScorer:
    """Unit-norm CLIP embeddings of images and texts."""

    model: Any
    processor: Any
    name: str
    device: torch.device
    batch_size: int = 64

    @torch.inference_mode()
    def image_embeddings(self, images: Images) -> torch.Tensor:
        """[N, D] unit-norm image embeddings (images uint8 [N,H,W,3] or float [N,3,H,W])."""
        arrays = to_uint8_images(images)
        out = []
        for i in range(0, len(arrays), self.batch_size):
            inputs = self.processor(images=list(arrays[i:i + self.batch_size]), return_tensors="pt")
            feats = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            out.append(torch.nn.functional.normalize(_tensor(feats).float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit-norm text embeddings (texts truncated to CLIP's 77 tokens)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            inputs = self.processor(text=texts[i:i + self.batch_size], return_tensors="pt",
                                    padding=True, truncation=True)
            feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
            out.append(torch.nn.functional.normalize(_tensor(feats).float(), dim=-1).cpu())
        return torch.cat(out)


def _tensor(output: Any) -> torch.Tensor:
    """Newer transformers return a model output object instead of a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip(name: str | None = None, *, device: torch.device | str = "cpu") -> ClipScorer:
    """A CLIP model from a local folder or the local Hugging Face cache (never downloaded)."""
    name = name or DEFAULT_CLIP
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(name, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        raise MetricUnavailable(
            f"CLIP model '{name}' is not available offline ({type(e).__name__}); download it on a "
            f"connected machine into the Hugging Face cache, or set eval.clip_model=/path/to/folder"
        ) from None
    device = torch.device(device)
    return ClipScorer(model.eval().to(device), processor, name, device)


def clip_score(scorer: ClipScorer, images: Images, captions: list[str], *, num_bootstrap: int = 1000,
               seed: int = 0) -> dict[str, float]:
    """Mean of 100 * max(cos(image, caption), 0) with a bootstrap 95% CI (Hessel et al. 2021)."""
    sims = (scorer.image_embeddings(images) * scorer.text_embeddings(captions)).sum(-1)
    per_sample = (100.0 * sims.clamp(min=0)).double().numpy()
    return summarize(per_sample, chance=float("nan"), num_bootstrap=num_bootstrap, seed=seed)


def clip_r_precision(scorer: ClipScorer, images: Images, captions: list[str], *,
                     caption_pool: list[str], num_mismatched: int = 99, num_bootstrap: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """R-precision with CLIP as scorer: the true caption against `num_mismatched` other captions."""
    pool = sorted(set(caption_pool))
    img = scorer.image_embeddings(images)  # [N, D]
    true = (img * scorer.text_embeddings(captions)).sum(-1)  # [N]
    pool_emb = scorer.text_embeddings(pool)  # [P, D]
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(pool)}
    others = np.empty((len(captions), num_mismatched), dtype=np.int64)
    for n, caption in enumerate(captions):  # other captions only: never the true one
        choices = np.arange(len(pool))
        if caption in index:
            choices = np.delete(choices, index[caption])
        others[n] = rng.choice(choices, size=num_mismatched, replace=len(choices) < num_mismatched)
    mismatched = torch.einsum("nd,nkd->nk", img, pool_emb[torch.from_numpy(others)])
    hits = r_precision_hits(true, mismatched)
    return summarize(hits, chance=1.0 / (1 + num_mismatched), num_bootstrap=num_bootstrap, seed=seed)
