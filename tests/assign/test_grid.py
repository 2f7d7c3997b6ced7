"""YOLO-style grid assignment: level and cell choice, the nearest-centre collision rule (seed 002)."""

import math

import pytest
import torch

from anchorlab.anchors import grid_points
from anchorlab.assign import BACKGROUND
from anchorlab.assign.grid import YOLO_SIZE_RANGES, GridAssignment, grid_assign

BG = BACKGROUND
SIZES = [(8, 8), (4, 4), (2, 2)]  # a 64 px image at strides 8, 16, 32
STRIDES = [8, 16, 32]
RANGES = [(0, 16), (16, 32), (32, math.inf)]
STARTS = [0, 64, 80]  # level starts: 0, 8*8, 8*8 + 4*4


def box(cx: float, cy: float, size: float) -> tuple[float, float, float, float]:
    return (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def assign(*rows, **kw) -> GridAssignment:
    return grid_assign([boxes(*rows)], SIZES, STRIDES, size_ranges=RANGES, **kw)


def owners(out: GridAssignment, image: int = 0) -> dict[int, int]:
    """``{prior index: object index}`` of the non-background priors."""
    m = out.matched[image]
    return {int(i): int(m[i]) for i in torch.nonzero(m >= 0).flatten()}


def test_result_fields_and_defaults():
    assert GridAssignment._fields == ("matched", "level_of_gt", "cell_of_gt", "collisions", "losers", "moved")
    assert ((0, 64), (64, 128), (128, math.inf)) == YOLO_SIZE_RANGES


def test_flat_index_is_level_start_plus_row_major_cell():
    # one object per level: size picks the level, the centre picks (y, x)
    out = assign(box(21, 45, 10), box(40, 8, 20), box(50, 20, 40))
    cells = [STARTS[0] + 5 * 8 + 2, STARTS[1] + 0 * 4 + 2, STARTS[2] + 0 * 2 + 1]
    assert out.level_of_gt.tolist() == [[0, 1, 2]]
    assert out.cell_of_gt.tolist() == [cells]
    assert owners(out) == {cells[0]: 0, cells[1]: 1, cells[2]: 2}
    assert out.matched.shape == (1, 64 + 16 + 4)
    # the same order as grid_points: the owning cell's point is the centre of that cell
    points, _ = grid_points(SIZES, STRIDES)
    torch.testing.assert_close(points[cells], torch.tensor([[20.0, 44.0], [40.0, 8.0], [48.0, 16.0]]))


def test_size_ranges_are_half_open():
    out = assign(box(20, 20, 16), box(20, 20, 15.5))
    assert out.level_of_gt.tolist() == [[1, 0]]


def test_centres_are_clamped_to_the_grid():
    out = assign((56, 56, 64, 64), (-4, -4, 4, 4))  # centres (60, 60) and (0, 0)
    assert out.cell_of_gt.tolist() == [[7 * 8 + 7, 0]]
    out = grid_assign([boxes((60, 60, 68, 68))], SIZES, STRIDES, size_ranges=RANGES)  # centre (64, 64)
    assert out.cell_of_gt.tolist() == [[7 * 8 + 7]]


def test_two_centres_in_one_cell_nearest_to_the_cell_centre_wins():
    # cell (2, 2) of level 0 spans 16..24, centre (20, 20)
    near, far = box(19, 21, 10), box(17, 17, 12)
    for rows, winner in (((far, near), 1), ((near, far), 0)):  # order of writing does not matter
        out = assign(*rows)
        assert owners(out) == {2 * 8 + 2: winner}
        loser = 1 - winner
        assert out.losers[0].tolist() == [i == loser for i in range(2)]
        assert out.collisions.tolist() == [1]
        assert out.cell_of_gt[0, loser] == -1 and out.cell_of_gt[0, winner] == 18
        assert loser not in out.matched[0].tolist()


def test_three_way_collision_and_exact_tie():
    out = assign(box(23, 23, 8), box(20.5, 20, 8), box(17, 18, 8), box(50, 50, 8))
    assert owners(out) == {18: 1, 6 * 8 + 6: 3}
    assert out.losers.tolist() == [[True, False, True, False]] and out.collisions.tolist() == [2]
    # equal distance to the cell centre: the lower index wins
    out = assign(box(18, 20, 8), box(22, 20, 8), box(20, 18, 8))
    assert owners(out) == {18: 0} and out.collisions.tolist() == [2]


def test_collisions_are_per_level():
    out = assign(box(20, 20, 8), box(20, 20, 20))  # same centre, different levels: no collision
    assert owners(out) == {18: 0, STARTS[1] + 1 * 4 + 1: 1} and out.collisions.tolist() == [0]


def test_losers_move_to_the_next_coarser_then_finer_level():
    a, b = box(20, 20, 20), box(22, 22, 24)  # both level 1, cell (1, 1) of centre (24, 24): b is nearer
    out = assign(a, b)
    assert owners(out) == {STARTS[1] + 5: 1} and out.losers.tolist() == [[True, False]]
    moved = assign(a, b, move_losers_to_neighbour_level=True)
    assert moved.level_of_gt.tolist() == [[2, 1]]
    assert moved.cell_of_gt.tolist() == [[STARTS[2], STARTS[1] + 5]]
    assert moved.moved.tolist() == [[True, False]] and moved.collisions.tolist() == [0]
    assert owners(moved) == {STARTS[2]: 0, STARTS[1] + 5: 1}
    # the coarser cell is held by a big object: the loser goes to the finer level instead
    big = box(16, 16, 40)
    moved = assign(a, b, big, move_losers_to_neighbour_level=True)
    assert moved.level_of_gt.tolist() == [[0, 1, 2]]
    assert moved.cell_of_gt.tolist() == [[2 * 8 + 2, STARTS[1] + 5, STARTS[2]]]
    # the finest level has no finer neighbour and a full coarser cell: the object stays a loser
    small = assign(box(21, 21, 8), box(20, 20, 8), box(24, 24, 20), move_losers_to_neighbour_level=True)
    assert small.losers.tolist() == [[True, False, False]] and small.collisions.tolist() == [1]
    assert small.level_of_gt[0, 0] == 0 and small.cell_of_gt[0, 0] == -1
    assert 0 not in small.matched[0].tolist()


def test_moved_losers_compete_by_the_same_rule():
    # three level-1 objects in cell (1, 1): one wins, two move to level 2 cell (0, 0) and collide there
    rows = (box(24, 24, 20), box(18, 18, 20), box(30, 29, 20))
    out = assign(*rows, move_losers_to_neighbour_level=True)
    # at level 2 the cell centre is (16, 16): object 1 (18, 18) is nearer than object 2 (30, 29), which
    # then takes its free level-0 cell (3, 3)
    assert owners(out) == {STARTS[1] + 5: 0, STARTS[2]: 1, 3 * 8 + 3: 2}
    assert out.level_of_gt.tolist() == [[1, 2, 0]]
    assert out.losers.tolist() == [[False, False, False]] and out.moved.tolist() == [[False, True, True]]
    # with level 0's cell taken too, object 2 is the one loser
    out = assign(*rows, box(28, 28, 8), move_losers_to_neighbour_level=True)
    assert out.losers.tolist() == [[False, False, True, False]] and out.collisions.tolist() == [1]
    assert 2 not in out.matched[0].tolist()


def test_objects_outside_every_range_get_no_cell():
    out = grid_assign(
        [boxes(box(20, 20, 8), box(40, 40, 50))], SIZES, STRIDES, size_ranges=[(0, 16), (16, 32), (32, 48)]
    )
    assert out.level_of_gt.tolist() == [[0, -1]] and out.cell_of_gt.tolist() == [[18, -1]]
    assert out.losers.tolist() == [[False, False]] and out.collisions.tolist() == [0]


def test_zero_objects_and_argument_checks():
    out = grid_assign([torch.zeros(0, 4), torch.zeros(0, 4)], SIZES, STRIDES, size_ranges=RANGES)
    assert out.matched.shape == (2, 84) and (out.matched == BG).all()
    assert out.cell_of_gt.shape == (2, 0) and out.collisions.tolist() == [0, 0]
    empty_level = grid_assign([boxes(box(20, 20, 8))], [(0, 0), (4, 4), (2, 2)], STRIDES, size_ranges=RANGES)
    assert empty_level.cell_of_gt.tolist() == [[-1]] and empty_level.matched.shape == (1, 20)
    assert grid_assign([boxes(box(20, 20, 8))], SIZES, STRIDES).level_of_gt.tolist() == [
        [0]
    ]  # default ranges
    with pytest.raises(ValueError, match="one entry per level"):
        grid_assign([boxes(box(20, 20, 8))], SIZES[:2], STRIDES[:2])  # the defaults are for 3 levels


def test_batched_equals_one_image_at_a_time():
    gen = torch.Generator().manual_seed(1)
    gts = []
    for n in (30, 0, 12):
        c = torch.rand(n, 2, generator=gen) * 64
        s = torch.rand(n, 1, generator=gen) * 50 + 2
        gts.append(torch.cat([c - s / 2, c + s / 2], dim=1))
    for move in (False, True):
        batched = grid_assign(gts, SIZES, STRIDES, size_ranges=RANGES, move_losers_to_neighbour_level=move)
        assert batched.collisions[0] > 0  # dense enough to collide
        for i, gt in enumerate(gts):
            single = grid_assign(
                [gt], SIZES, STRIDES, size_ranges=RANGES, move_losers_to_neighbour_level=move
            )
            m = gt.shape[0]
            assert torch.equal(batched.matched[i], single.matched[0])
            for field in ("level_of_gt", "cell_of_gt", "losers", "moved"):
                assert torch.equal(getattr(batched, field)[i, :m], getattr(single, field)[0])
            assert batched.collisions[i] == single.collisions[0]
            # every placed object owns exactly its cell; losers own nothing
            placed = single.cell_of_gt[0] >= 0
            assert torch.equal(
                single.matched[0, single.cell_of_gt[0, placed]], torch.nonzero(placed).flatten()
            )
            assert int((single.matched[0] >= 0).sum()) == int(placed.sum())


def _naive_last_writer(gt: torch.Tensor) -> torch.Tensor:
    """The buggy target writer of seed 002: a Python loop writing each object into its cell in order."""
    matched = torch.full((sum(h * w for h, w in SIZES),), BG, dtype=torch.int64)
    extent = (gt[:, 2:] - gt[:, :2]).amax(dim=1)
    for i, (b, e) in enumerate(zip(gt.tolist(), extent.tolist(), strict=True)):
        level = next((k for k, (lo, hi) in enumerate(RANGES) if lo <= e < hi), None)
        if level is None:
            continue
        (h, w), s = SIZES[level], STRIDES[level]
        gx = min(max(int((b[0] + b[2]) / 2 // s), 0), w - 1)
        gy = min(max(int((b[1] + b[3]) / 2 // s), 0), h - 1)
        matched[STARTS[level] + gy * w + gx] = i  # overwrites whoever was there
    return matched


def test_last_collision_policy_is_the_last_writer_whatever_the_distance():
    near, far = box(19, 21, 10), box(17, 17, 12)  # both in cell (2, 2) of level 0; `near` is nearer
    for rows, winner in (((far, near), 1), ((near, far), 1)):  # the one written last wins
        out = assign(*rows, collision="last")
        assert owners(out) == {2 * 8 + 2: winner}
        assert out.losers[0].tolist() == [i != winner for i in range(2)] and out.collisions.tolist() == [1]
    assert owners(assign(near, far)) == {18: 0}  # "nearest" picks `near` in either order


def test_last_policy_matches_a_naive_loop_on_random_crowded_images():
    gen = torch.Generator().manual_seed(3)
    gts = []
    for n in (40, 0, 17, 5):
        c = torch.rand(n, 2, generator=gen) * 64
        s = torch.rand(n, 1, generator=gen) * 50 + 2
        gts.append(torch.cat([c - s / 2, c + s / 2], dim=1))
    out = grid_assign(gts, SIZES, STRIDES, size_ranges=RANGES, collision="last")
    nearest = grid_assign(gts, SIZES, STRIDES, size_ranges=RANGES, collision="nearest")
    assert out.collisions.tolist() == nearest.collisions.tolist() and out.collisions[0] > 0
    assert not torch.equal(out.matched, nearest.matched)  # the winners differ
    for i, gt in enumerate(gts):
        assert torch.equal(out.matched[i], _naive_last_writer(gt))


def test_collision_policy_names_and_the_old_move_flag():
    a, b = box(20, 20, 20), box(22, 22, 24)
    assert torch.equal(
        assign(a, b, collision="move").matched, assign(a, b, move_losers_to_neighbour_level=True).matched
    )
    with pytest.raises(ValueError, match="last, nearest, move"):
        assign(a, b, collision="first")
    with pytest.raises(ValueError, match="move_losers_to_neighbour_level"):
        assign(a, b, collision="last", move_losers_to_neighbour_level=True)
