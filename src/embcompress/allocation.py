"""The one rank allocator: greedy marginal spectral energy per unit of cost, under several budgets.

Used by the ``grouped`` method (a parameter budget) and by ``embcompress compress``'s layout search
(a byte budget and the parameter cap). Each step adds one rank to the bucket whose next singular
value keeps the most squared energy per unit of its first cost, as long as every budget holds.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RankBucket:
    """One group of rows getting a rank of its own.

    Attributes:
        spectrum: Singular values of the bucket's rows (descending).
        cost: What one more rank costs in each budgeted resource; gains are measured per ``cost[0]``.
        cap: The largest rank worth giving this bucket.
        rank: The starting rank.
    """

    spectrum: torch.Tensor
    cost: tuple[int, ...]
    cap: int
    rank: int = 1

    def gain(self, rank: int) -> float:
        """Energy kept per unit of ``cost[0]`` by going from ``rank`` to ``rank + 1``."""
        return float(self.spectrum[rank] ** 2) / self.cost[0]


def greedy_ranks(
    buckets: Sequence[RankBucket], limits: Sequence[int], used: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Ranks after greedy growth from each bucket's starting rank, and the resources then used.

    ``used`` is what the starting point already takes of each resource in ``limits``.
    """
    ranks = [b.rank for b in buckets]
    spent = list(used)
    heap = [(-b.gain(b.rank), i) for i, b in enumerate(buckets) if b.rank < min(b.cap, len(b.spectrum))]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        bucket = buckets[i]
        if any(s + c > lim for s, c, lim in zip(spent, bucket.cost, limits, strict=True)):
            continue
        spent = [s + c for s, c in zip(spent, bucket.cost, strict=True)]
        ranks[i] += 1
        if ranks[i] < min(bucket.cap, len(bucket.spectrum)):
            heapq.heappush(heap, (-bucket.gain(ranks[i]), i))
    return ranks, spent


def kept_energy(spectrum: torch.Tensor, rank: int) -> float:
    """Squared singular values kept at ``rank``."""
    return float(spectrum[:rank].pow(2).sum())
