"""Random pos/neg sampling (RPN / RoI head) and SSD hard negative mining, against per-image references."""

import pytest
import torch

from anchorlab.assign import BACKGROUND, IGNORE
from anchorlab.assign.sampling import hard_negative_mining, sample_pos_neg

BG, IG = BACKGROUND, IGNORE


def matched_row(num_pos: int, num_neg: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """A shuffled row of ``length`` priors: ``num_pos`` positives (object indices 0..2), ``num_neg``
    negatives, the rest ignored."""
    num_ignore = length - num_pos - num_neg
    row = torch.cat(
        [
            torch.randint(0, 3, (num_pos,), generator=generator),
            torch.full((num_neg,), BG),
            torch.full((num_ignore,), IG),
        ]
    )
    return row[torch.randperm(row.numel(), generator=generator)]


@pytest.mark.parametrize(
    ("num_pos", "num_neg", "want_pos", "want_neg"),
    [
        (300, 900, 128, 128),  # plenty of both: the asked ratio
        (20, 900, 20, 236),  # few positives: negatives fill up to 256
        (300, 50, 128, 50),  # few negatives: take what exists
        (0, 900, 0, 256),  # no positives at all
        (5, 0, 5, 0),  # no negatives at all
        (0, 0, 0, 0),
    ],
)
def test_sample_counts(num_pos: int, num_neg: int, want_pos: int, want_neg: int) -> None:
    g = torch.Generator().manual_seed(0)
    matched = torch.stack([matched_row(num_pos, num_neg, 1300, g), matched_row(num_pos, num_neg, 1300, g)])
    pos, neg = sample_pos_neg(matched, num_samples=256, positive_fraction=0.5, generator=g)
    assert pos.shape == neg.shape == matched.shape and pos.dtype == torch.bool
    assert pos.sum(1).tolist() == [want_pos] * 2
    assert neg.sum(1).tolist() == [want_neg] * 2
    assert not (pos & neg).any()
    assert bool((matched[pos] >= 0).all()) and bool((matched[neg] == BG).all())
    assert not (pos | neg)[matched == IG].any()  # IGNORE is never sampled


def test_sample_rows_are_independent_and_fraction_25_percent() -> None:
    g = torch.Generator().manual_seed(1)
    matched = torch.stack(
        [matched_row(500, 2000, 2500, g), matched_row(10, 30, 2500, g), matched_row(0, 3, 2500, g)]
    )
    pos, neg = sample_pos_neg(matched, num_samples=512, positive_fraction=0.25, generator=g)
    assert pos.sum(1).tolist() == [128, 10, 0]
    assert neg.sum(1).tolist() == [384, 30, 3]


def test_sampling_is_uniform_and_reproducible() -> None:
    """Every positive is equally likely to be drawn (1 in 4 here): counts over many draws stay close."""
    matched = torch.zeros((1, 40), dtype=torch.int64)  # 40 positives, 10 drawn each time
    g = torch.Generator().manual_seed(2)
    hits = torch.zeros(40)
    for _ in range(400):
        pos, _ = sample_pos_neg(matched, num_samples=20, positive_fraction=0.5, generator=g)
        hits += pos[0].float()
    assert hits.sum() == 4000
    assert float(hits.min()) > 60 and float(hits.max()) < 140  # expectation 100, sd ~8.7
    a = sample_pos_neg(matched, 20, 0.5, generator=torch.Generator().manual_seed(3))
    b = sample_pos_neg(matched, 20, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sample_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[B, R\]"):
        sample_pos_neg(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_pos_neg(torch.zeros((1, 5), dtype=torch.int64), positive_fraction=1.5)


def reference_hnm(loss, pos, neg, ratio, min_negatives):
    """Per-image loop: sort the eligible negatives by (-loss, index), keep the first quota."""
    out = torch.zeros_like(neg)
    for b in range(loss.shape[0]):
        quota = max(int(int(pos[b].sum()) * ratio), min_negatives)
        eligible = neg[b].nonzero().squeeze(1).tolist()
        eligible.sort(key=lambda r: (-float(loss[b, r]), r))
        out[b, eligible[:quota]] = True
    return out


@pytest.mark.parametrize("seed", range(5))
def test_hard_negative_mining_equals_per_image_argsort(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    matched = torch.stack([matched_row(p, 200, 300, g) for p in (0, 3, 17, 60)])
    pos, neg = matched >= 0, matched == BG
    # quantised losses create many ties, which must be broken by the lower index
    loss = torch.randint(0, 20, matched.shape, generator=g).float() / 4
    for ratio, min_neg in ((3.0, 0), (3.0, 5), (0.5, 0), (1.5, 2)):
        got = hard_negative_mining(loss, pos, neg, neg_pos_ratio=ratio, min_negatives=min_neg)
        assert torch.equal(got, reference_hnm(loss, pos, neg, ratio, min_neg)), (ratio, min_neg)


def test_hard_negative_mining_counts_and_edge_cases() -> None:
    matched = torch.tensor(
        [
            [0, 1, BG, BG, BG, BG, BG, BG, BG, IG],  # 2 positives -> 6 of 7 negatives
            [0, BG, BG, IG, IG, IG, IG, IG, IG, IG],  # 1 positive, only 2 negatives -> both
            [BG, BG, BG, BG, BG, IG, IG, IG, IG, IG],  # no positives -> min_negatives
            [IG] * 10,  # nothing eligible
        ]
    )
    pos, neg = matched >= 0, matched == BG
    loss = torch.arange(10.0).expand(4, 10).clone()
    loss[:, 9] = 100.0  # a huge loss on an IGNORE prior must not be picked
    got = hard_negative_mining(loss, pos, neg, neg_pos_ratio=3.0, min_negatives=2)
    assert got.sum(1).tolist() == [6, 2, 2, 0]
    assert got[0].nonzero().squeeze(1).tolist() == [3, 4, 5, 6, 7, 8]  # the 6 highest losses
    assert got[2].nonzero().squeeze(1).tolist() == [3, 4]
    assert not (got & ~neg).any()
    assert hard_negative_mining(loss, pos, neg, min_negatives=0)[2].sum() == 0
    # NaN losses rank last instead of being picked
    nan_loss = loss.clone()
    nan_loss[0, 8] = float("nan")
    assert hard_negative_mining(nan_loss, pos, neg)[0].nonzero().squeeze(1).tolist() == [2, 3, 4, 5, 6, 7]
    # the loss is not differentiated through, and an empty batch works
    hard_negative_mining(loss.requires_grad_(), pos, neg)
    empty = torch.zeros((0, 0), dtype=torch.bool)
    assert hard_negative_mining(torch.zeros(0, 0), empty, empty).shape == (0, 0)
    with pytest.raises(ValueError, match="one \\[B, R\\] shape"):
        hard_negative_mining(loss[:, :5], pos, neg)
