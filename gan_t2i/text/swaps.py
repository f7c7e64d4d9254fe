"""Hard negative captions by word swaps: the caption with one attribute word changed.

A matching-aware discriminator learns what a caption says from real images paired with other
images' captions. Those differ in many words at once, so D can reject them by the easiest
attribute (colour) and never learn the harder ones (shape). A swapped caption differs in exactly
one attribute: "a large red square on the left" -> "a large red circle on the left". Given word
groups (interchangeable words or phrases: colours, shapes, positions, counts), every caption
gets one variant per group it mentions, with that group's word replaced by another of the group.

The choice of replacement depends only on the caption, the group and a seed (a stable hash), so
it is the same on every run, machine and process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container, Sequence

from gan_t2i.utils import GanT2IError

WordGroups = Sequence[Sequence[str]]


def check_groups(groups: WordGroups) -> list[list[str]]:
    """Groups as lists of lowercase words; a clear error for groups that cannot swap."""
    out, seen = [], {}
    for k, group in enumerate(groups):
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise GanT2IError(f"text.swap_groups[{k}] must be a list of words, got {group!r}")
        words = [str(w).strip().lower() for w in group]
        if len(set(words)) < 2 or any(not w for w in words):
            raise GanT2IError(f"text.swap_groups[{k}] needs at least two distinct non-empty "
                              f"words, got {list(group)!r}")
        for w in words:
            if w in seen and seen[w] != k:
                raise GanT2IError(f"word {w!r} is in text.swap_groups[{seen[w]}] and [{k}]")
            seen[w] = k
        out.append(words)
    return out


def _pattern(group: list[str]) -> re.Pattern[str]:
    # Longest first, so "top left" wins over "left" when a group holds both.
    words = sorted(group, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def _candidates(caption: str, group_index: int, found: str, choices: list[str], seed: int
                ) -> list[str]:
    """The group's other words, rotated by a stable hash: the first is the usual pick."""
    key = f"{seed}\x00{group_index}\x00{caption}".encode()
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    others = [w for w in choices if w != found]
    start = h % len(others)
    return others[start:] + others[:start]


class CaptionSwapper:
    """Swapped variants of captions: one per word group, None where the group is absent."""

    def __init__(self, groups: WordGroups, *, seed: int = 0):
        self.groups = check_groups(groups)
        self.seed = seed
        self._patterns = [_pattern(g) for g in self.groups]

    def __len__(self) -> int:
        return len(self.groups)

    def variants(self, caption: str, allowed: Container[str] | None = None) -> list[str | None]:
        """For each group: the caption with its first word of that group replaced, or None.

        The replacement keeps the original's capitalisation of the first letter. With
        `allowed`, the first replacement (in the caption's stable order) whose result is in
        `allowed` is taken; None where no replacement gives an allowed caption.
        """
        out: list[str | None] = []
        for k, (group, pattern) in enumerate(zip(self.groups, self._patterns)):
            match = pattern.search(caption)
            variant = None
            if match is not None:
                found = match.group(0)
                for new in _candidates(caption, k, found.lower(), group, self.seed):
                    if found[:1].isupper():
                        new = new[:1].upper() + new[1:]
                    text = caption[:match.start()] + new + caption[match.end():]
                    if allowed is None or text in allowed:
                        variant = text
                        break
            out.append(variant)
        return out
