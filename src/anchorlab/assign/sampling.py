"""Which assigned priors enter the loss: random positive/negative sampling and hard negative mining.

* ``sample_pos_neg`` -- Faster R-CNN's RPN (256 per image, half positives) and RoI head (512 per image,
  25 % positives): torchvision's ``BalancedPositiveNegativeSampler`` semantics. Up to
  ``int(num_samples * positive_fraction)`` positives are drawn uniformly at random; negatives fill the
  rest of ``num_samples`` (so an image with few positives gets more negatives); when there are fewer
  candidates than asked, all of them are taken.
* ``hard_negative_mining`` -- SSD (Liu et al., 2016): all positives plus, per image, the negatives of
  highest loss, ``neg_pos_ratio`` (3) per positive.

Both are vectorised over images and priors: every row is ranked once (random keys or losses, one sort)
and an element is kept when its rank is below the row's quota. No Python loop over images or priors.
Input ``matched`` uses the assigners' convention: object index ``>= 0`` (positive), ``BACKGROUND``
(negative), ``IGNORE`` (never sampled). Shape legend (docs/architecture.md): B images, R priors (or
proposals).
"""

from __future__ import annotations

import torch

from anchorlab.assign import BACKGROUND

__all__ = ["hard_negative_mining", "sample_pos_neg"]


def _rank(keys: torch.Tensor, eligible: torch.Tensor, descending: bool) -> torch.Tensor:
    """``rank[b, r]``: position of prior ``r`` in row ``b`` ordered eligible-first, then by key, then by
    index (two stable sorts), so the eligible priors of a row hold ranks ``0 .. #eligible - 1``."""
    order = keys.sort(dim=1, descending=descending, stable=True).indices  # [B, R]
    first = eligible.gather(1, order).to(torch.uint8).sort(dim=1, descending=True, stable=True).indices
    order = order.gather(1, first)
    positions = torch.arange(keys.shape[1], device=keys.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def sample_pos_neg(
    matched: torch.Tensor,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random balanced sampling per image.

    Args:
        matched: ``[B, R]`` int, object index / ``BACKGROUND`` / ``IGNORE`` per prior.
        num_samples: samples per image (positives + negatives).
        positive_fraction: at most ``int(num_samples * positive_fraction)`` positives per image.
        generator: optional ``torch.Generator`` (on ``matched``'s device) for reproducible draws.

    Returns:
        ``(pos_mask [B, R], neg_mask [B, R])`` bool, disjoint; per image ``#pos = min(P, cap)`` and
        ``#neg = min(N, num_samples - #pos)`` with ``P``, ``N`` the available positives / negatives.
    """
    if matched.ndim != 2:
        raise ValueError(f"matched must have shape [B, R], got {tuple(matched.shape)}")
    if num_samples < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(
            f"need num_samples >= 0 and 0 <= positive_fraction <= 1, got {num_samples}, {positive_fraction}"
        )
    positive = matched >= 0
    negative = matched == BACKGROUND
    if matched.numel() == 0:
        return positive, negative
    max_pos = int(num_samples * positive_fraction)
    num_pos = positive.sum(dim=1).clamp(max=max_pos)  # [B]
    num_neg = negative.sum(dim=1).clamp(max=num_samples - num_pos)  # [B]
    # One random key per prior: the lowest keys among a row's positives (negatives) are its sample.
    keys = torch.rand(matched.shape, generator=generator, device=matched.device)
    pos_rank = _rank(keys, positive, descending=False)
    neg_rank = _rank(keys, negative, descending=False)
    pos_mask = positive & (pos_rank < num_pos[:, None])
    neg_mask = negative & (neg_rank < num_neg[:, None])
    return pos_mask, neg_mask


def hard_negative_mining(
    neg_loss: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 0,
) -> torch.Tensor:
    """SSD's hard negatives: per image the ``max(floor(neg_pos_ratio * #pos), min_negatives)`` eligible
    negatives of highest loss (all of them when fewer are eligible).

    Args:
        neg_loss: ``[B, R]`` loss of each prior if it were a negative (e.g. the background cross-entropy);
            only its order matters and it is not differentiated through.
        pos_mask: ``[B, R]`` bool, the positives (counted per image).
        neg_mask: ``[B, R]`` bool, the eligible negatives (``BACKGROUND``, not ``IGNORE``).
        neg_pos_ratio: negatives per positive (SSD: 3).
        min_negatives: negatives kept even in an image without positives.

    Returns:
        ``[B, R]`` bool, the selected negatives (a subset of ``neg_mask``). Equal losses are broken by the
        lower prior index, so the result is deterministic.
    """
    if not neg_loss.shape == pos_mask.shape == neg_mask.shape or neg_loss.ndim != 2:
        raise ValueError(
            f"neg_loss, pos_mask and neg_mask must share one [B, R] shape, got {tuple(neg_loss.shape)}, "
            f"{tuple(pos_mask.shape)}, {tuple(neg_mask.shape)}"
        )
    if neg_pos_ratio < 0 or min_negatives < 0:
        raise ValueError(
            f"need neg_pos_ratio >= 0 and min_negatives >= 0, got {neg_pos_ratio}, {min_negatives}"
        )
    if neg_loss.numel() == 0:
        return neg_mask.clone()
    num_pos = pos_mask.sum(dim=1)
    quota = torch.floor(num_pos.to(torch.float64) * neg_pos_ratio).to(torch.int64).clamp(min=min_negatives)
    loss = neg_loss.detach()
    if loss.is_floating_point():  # a NaN loss ranks last instead of poisoning the sort
        loss = torch.nan_to_num(loss, nan=float("-inf"))
    rank = _rank(loss, neg_mask, descending=True)
    return neg_mask & (rank < quota[:, None])
