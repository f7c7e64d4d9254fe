"""Torch-side access to a store: a Dataset of (image, caption index) and a resumable sampler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from gan_t2i.data.store import StoreSplit


class ImageCaptionDataset(Dataset):
    """Items are `(image uint8 [3, H, W], caption index)`, one per caption of the split.

    With `xflip`, the dataset doubles: items N..2N-1 are the mirrored images (as StyleGAN's
    `--mirror`), so flipping is a deterministic function of the index and resumes exactly.
    """

    def __init__(self, split: StoreSplit, *, xflip: bool = False):
        self.split = split
        self.xflip = xflip
        self.caption_image = split.caption_image  # [M] caption -> image row

    def __len__(self) -> int:
        return self.split.num_captions * (2 if self.xflip else 1)

    def _decode_index(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.split.num_captions
        return index % n, index >= n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch: one gather from the memory map for the whole batch."""
        caption, flip = self._decode_index(np.asarray(indices, dtype=np.int64))
        rows = self.caption_image[caption]
        order = np.argsort(rows, kind="stable")  # read the memory map in file order
        batch = np.empty((len(rows),) + self.split.images.shape[1:], dtype=np.uint8)
        batch[order] = self.split.images[rows[order]]
        if flip.any():
            batch[flip] = batch[flip, :, ::-1]
        images = torch.from_numpy(batch).permute(0, 3, 1, 2)  # [B, 3, H, W]
        return [(images[i], int(caption[i])) for i in range(len(rows))]

    def caption_indices(self, indices: Sequence[int]) -> np.ndarray:
        """The caption index of each item [len(indices)] (items N..2N-1 are mirrored copies)."""
        return self._decode_index(np.asarray(indices, dtype=np.int64))[0]


class RankSlice(Dataset):
    """Fetches whole global batches for one data-parallel rank.

    `__getitems__(global batch)` returns `(images uint8 [b, 3, H, W] of this rank's contiguous
    slice, caption indices int64 [B] of the whole batch)`: images are read only where they are
    trained on, and every rank knows the global batch's captions (for the matching-aware term).
    The global batch must split evenly (`TrainData.loader` checks it).
    """

    def __init__(self, dataset: ImageCaptionDataset, *, rank: int = 0, world_size: int = 1):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(indices) // self.world_size
        mine = list(indices[self.rank * b:(self.rank + 1) * b])
        images, _ = collate(self.dataset.__getitems__(mine))
        return images, torch.from_numpy(self.dataset.caption_indices(indices))


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items into `(images uint8 [B, 3, H, W], caption indices int64 [B])`."""
    images = torch.stack([item[0] for item in batch])
    captions = torch.tensor([item[1] for item in batch], dtype=torch.int64)
    return images, captions


class InfiniteSampler(Sampler[int]):
    """An endless, deterministic stream of indices: a new permutation per epoch.

    The global stream depends only on (`size`, `seed`); rank r of `world_size` takes every
    `world_size`-th item from position `start + r`. `start` is the number of items already
    consumed globally, so a resumed run continues exactly where it stopped, on any world size.
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        epoch, order = -1, None
        while True:
            e, offset = divmod(position, self.size)
            if e != epoch:
                epoch, order = e, self._epoch_order(e)
            yield int(order[offset])
            position += self.world_size
