"""What the loop reads: the train split as batches, caption embeddings by index, sample captions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from gan_t2i.data import ImageCaptionDataset, ImageStore, InfiniteSampler, RankSlice
from gan_t2i.utils import GanT2IError

Tokens = tuple[torch.Tensor, torch.Tensor]  # (token embeddings [B, T, D] float32, mask [B, T] bool)


@dataclass
class TokenTable:
    """Token embeddings of a split's distinct captions and each caption's row among them."""

    tokens: torch.Tensor  # [U, T, D] float16
    mask: torch.Tensor  # [U, T] bool
    rows: torch.Tensor  # [M] int64: caption index -> row

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        """Read what prepare wrote with text.tokens=true."""
        from gan_t2i.prepare import load_aligned_tokens

        return cls(*load_aligned_tokens(path))

    def __call__(self, captions: torch.Tensor) -> Tokens:
        """Tokens of caption indices [B]."""
        rows = self.rows[captions]
        return self.tokens[rows].float(), self.mask[rows]


@dataclass
class SwapTable:
    """Swapped-caption negatives of the train split (see `gan_t2i.text.swaps`)."""

    embeddings: torch.Tensor  # [V, D] float16, distinct swapped captions
    rows: torch.Tensor  # [M, G] int64: caption index -> row of its variant per word group, or -1

    @classmethod
    def load(cls, path: Path) -> SwapTable:
        """Read what prepare wrote with text.swap_groups."""
        from gan_t2i.prepare import load_swaps

        return cls(*load_swaps(path))

    def __call__(self, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every variant of caption indices [B]: (embeddings [B, G, D] float32, valid [B, G]).

        A caption that does not name any word of group g has no variant g (valid False, row
        zero).
        """
        rows = self.rows[captions]  # [B, G]
        valid = rows >= 0
        return self.embeddings[rows.clamp(min=0)].float() * valid.unsqueeze(2), valid


@dataclass
class TrainData:
    """The train split and its caption embeddings, plus fixed captions for sample grids."""

    dataset: ImageCaptionDataset
    embeddings: torch.Tensor  # [M, D] float16, row i = caption i of the train split
    caption_image: torch.Tensor  # [M] int64, the image each caption describes
    sample_texts: list[str]
    sample_embeddings: torch.Tensor  # [K, D] float32
    token_table: TokenTable | None = None  # train split, when the generator uses cross-attention
    sample_tokens: Tokens | None = None  # [K, T, D], [K, T]
    swaps: SwapTable | None = None  # hard negative captions, with text.swap_groups

    @property
    def c_dim(self) -> int:
        """Caption embedding width."""
        return int(self.embeddings.shape[1])

    def embedding_mean(self) -> torch.Tensor:
        """Mean caption embedding of the train split [D] (for centring)."""
        return self.embeddings.float().mean(0)

    def tokens(self, captions: torch.Tensor) -> Tokens | None:
        """Token embeddings of a batch's caption indices, or None without a token table."""
        return self.token_table(captions) if self.token_table is not None else None

    def loader(self, *, batch_size: int, seed: int, start: int, rank: int = 0,
               world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
        """Endless global batches of `batch_size` items from item `start` on, as seen by `rank`.

        Yields `(uint8 images [b, 3, H, W], caption idx [batch_size])`: the images of this
        rank's contiguous slice (b = batch_size / world_size) and the whole batch's captions.
        The item stream depends only on the seed, so any world size trains on the same batches.
        """
        if batch_size % world_size:
            raise GanT2IError(f"train.batch_size={batch_size} does not split over "
                              f"{world_size} processes")
        sampler = BatchSampler(InfiniteSampler(len(self.dataset), seed=seed, start=start),
                               batch_size=batch_size, drop_last=False)
        # Its own generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run (which creates it again) would drift from the uninterrupted one.
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(RankSlice(self.dataset, rank=rank, world_size=world_size),
                          batch_sampler=sampler, generator=generator, collate_fn=_as_is,
                          num_workers=workers, pin_memory=pin_memory,
                          persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def _as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # RankSlice already returns the batch's tensors


def _sample_captions(store: ImageStore, embeddings: dict[str, Path], per_split: int,
                     tokens: dict[str, Path] | None) -> tuple[list[str], np.ndarray, Tokens | None]:
    """First caption of the first `per_split` images of each evaluation split."""
    texts, rows, tok, mask = [], [], [], []
    for split in ("val", "val_heldout"):
        if split not in store.splits or split not in embeddings:
            continue
        s = store.split(split)
        table = np.load(embeddings[split], mmap_mode="r")
        picked = s.first_captions(per_split)[0]
        texts += [s.captions[i] for i in picked]
        rows += [np.asarray(table[i], dtype=np.float32) for i in picked]
        if tokens:
            t, m = TokenTable.load(tokens[split])(torch.from_numpy(picked))
            tok.append(t)
            mask.append(m)
    sample_tokens = (torch.cat(tok), torch.cat(mask)) if tok else None
    return texts, (np.stack(rows) if rows else np.zeros((0, 1), np.float32)), sample_tokens


def load_train_data(store: ImageStore, embeddings: dict[str, Path], *, xflip: bool = False,
                    sample_captions: int = 6, tokens: dict[str, Path] | None = None,
                    swaps: Path | None = None) -> TrainData:
    """Open the train split and load its embeddings (and token embeddings) into memory."""
    split = store.split("train")
    table = torch.from_numpy(np.load(embeddings["train"]))  # [M, D] float16
    if table.shape[0] != split.num_captions:
        raise ValueError(f"embeddings have {table.shape[0]} rows for {split.num_captions} captions")
    token_table = TokenTable.load(tokens["train"]) if tokens else None
    swap_table = SwapTable.load(swaps) if swaps is not None else None
    if swap_table is not None and swap_table.rows.shape[0] != split.num_captions:
        raise GanT2IError(f"{swaps} has {swap_table.rows.shape[0]} rows for "
                          f"{split.num_captions} captions: run prepare again")
    texts, sample, sample_tokens = _sample_captions(store, embeddings, sample_captions, tokens)
    if not texts:  # no evaluation split: use train captions
        texts = split.captions[:sample_captions]
        sample = table[: len(texts)].float().numpy()
        sample_tokens = token_table(torch.arange(len(texts))) if token_table else None
    return TrainData(dataset=ImageCaptionDataset(split, xflip=xflip), embeddings=table,
                     caption_image=torch.from_numpy(split.caption_image.copy()),
                     sample_texts=texts, sample_embeddings=torch.from_numpy(sample),
                     token_table=token_table, sample_tokens=sample_tokens, swaps=swap_table)
