"""Token-frequency buckets: frequent / medium / rare / never seen in the data."""

from __future__ import annotations

import torch

BUCKETS = ("frequent", "medium", "rare", "never")
#: Cumulative share of token occurrences covered by the ``frequent`` and ``frequent + medium`` buckets.
FREQUENT_SHARE = 0.5
MEDIUM_SHARE = 0.9


def frequency_buckets(counts: torch.Tensor) -> torch.Tensor:
    """Bucket index (into :data:`BUCKETS`) of every token id, by its share of occurrences.

    Tokens are ranked by count; ``frequent`` are the most frequent tokens that together cover the
    first :data:`FREQUENT_SHARE` of occurrences, ``medium`` the next ones up to :data:`MEDIUM_SHARE`,
    ``rare`` the remaining seen tokens and ``never`` the tokens with count 0. Being defined by
    coverage, the buckets do not depend on the size of the corpus.
    """
    counts = counts.double()
    total = float(counts.sum())
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order]
    before = (sorted_counts.cumsum(0) - sorted_counts) / max(total, 1e-30)
    bucket = torch.full_like(order, 2)
    bucket[before < MEDIUM_SHARE] = 1
    bucket[before < FREQUENT_SHARE] = 0
    bucket[sorted_counts == 0] = 3
    out = torch.empty_like(order)
    out[order] = bucket
    return out


def bucket_summary(counts: torch.Tensor, buckets: torch.Tensor) -> dict[str, dict[str, float]]:
    """Number of token ids and share of occurrences per bucket."""
    total = max(float(counts.sum()), 1e-30)
    return {
        name: {
            "tokens": int((buckets == i).sum()),
            "occurrence_share": round(float(counts[buckets == i].sum()) / total, 6),
        }
        for i, name in enumerate(BUCKETS)
    }
