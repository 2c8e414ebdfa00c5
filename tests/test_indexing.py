"""misc.indexing: IRN's search offsets, paths and pair indices (golden counts from the IRN reference)."""
from __future__ import annotations

import pytest
import torch

from misc.indexing import PathIndex, edge_to_affinity, offset_path, search_offsets


@pytest.fixture(scope="module")
def train_index() -> PathIndex:
    """The training configuration: radius 10 on the 128x128 stride-4 map."""
    return PathIndex(10, (128, 128))


def _geometric_path(dy: int, dx: int) -> set[tuple[int, int]]:
    """The path straight from the definition: bounding-box points at float distance < 1 from the line."""
    return {(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1}


@pytest.mark.parametrize("radius,count", [(10, 152), (5, 34)])
def test_search_offsets_half_plane(radius, count):
    offs = search_offsets(radius)
    assert len(offs) == len(set(offs)) == count
    assert offs[:radius - 1] == [(0, dx) for dx in range(1, radius)]
    for dy, dx in offs:
        assert 0 < dy * dy + dx * dx < radius ** 2
        assert dy > 0 or (dy == 0 and dx > 0)
        assert (-dy, -dx) not in offs
    full = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx < radius ** 2 and abs(dy) < radius and abs(dx) < radius}
    assert set(offs) | {(-dy, -dx) for dy, dx in offs} == full


def test_offset_path_examples():
    assert offset_path(0, 3) == [(0, 3), (0, 2), (0, 1), (0, 0)]
    assert offset_path(1, 2) == [(1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0)]
    assert offset_path(2, -1)[0] == (2, -1) and offset_path(2, -1)[-1] == (0, 0)


@pytest.mark.parametrize("radius", [5, 10])
def test_paths_match_definition(radius):
    for dy, dx in search_offsets(radius):
        path = offset_path(dy, dx)
        assert set(path) == _geometric_path(dy, dx) and len(path) == len(set(path))
        assert path[0] == (dy, dx) and path[-1] == (0, 0)


def test_train_index_golden(train_index):
    p = train_index
    lengths = [g.shape[1] for g in p.path_indices]
    assert len(p.path_indices) == 20 and lengths == sorted(lengths) and (lengths[0], lengths[-1]) == (2, 22)
    assert sum(g.shape[0] * g.shape[1] for g in p.path_indices) == 2134
    assert p.offsets.shape == (152, 2) and p.dst_indices.shape == (152, 13090)
    assert p.src_size == (119, 110) and p.n_src == 13090 and p.src_indices.shape == (13090,)
    assert all(g.dtype == torch.long for g in p.path_indices + [p.src_indices, p.dst_indices])


def test_small_radius_golden():
    p = PathIndex(5, (20, 30))
    assert len(p.path_indices) == 9
    assert sum(g.shape[0] * g.shape[1] for g in p.path_indices) == 242
    assert p.offsets.shape == (34, 2) and p.src_size == (16, 22)


def test_groups_order_and_endpoints(train_index):
    p = train_index
    assert torch.equal(p.offsets, torch.cat(p.group_offsets))
    assert {tuple(o) for o in p.offsets.tolist()} == set(search_offsets(10))
    row = 0
    for offs, paths, ind in zip(p.group_offsets, p.group_paths, p.path_indices):
        assert torch.equal(paths[:, 0], offs) and not paths[:, -1].any()
        assert ind.shape == (len(offs), paths.shape[1], p.n_src)
        assert torch.equal(ind[:, 0], p.dst_indices[row:row + len(offs)])  # destination first
        assert torch.equal(ind[:, -1], p.src_indices.expand(len(offs), -1))  # source last
        row += len(offs)


def test_sources_and_destinations_non_square():
    h, w, r = 13, 21, 5
    p = PathIndex(r, (h, w))
    ys, xs = p.src_indices // w, p.src_indices % w
    assert p.n_src == (h - 4) * (w - 8)
    assert ys.min() == 0 and ys.max() == h - 5 and xs.min() == 4 and xs.max() == w - 5
    assert torch.equal(p.src_indices, torch.sort(p.src_indices).values)  # row-major
    dy, dx = p.offsets[:, 0:1], p.offsets[:, 1:2]
    assert torch.equal(p.dst_indices // w, ys + dy) and torch.equal(p.dst_indices % w, xs + dx)
    for ind in p.path_indices:
        assert ind.min() >= 0 and ind.max() < h * w


def test_edge_to_affinity_brute_force():
    torch.manual_seed(0)
    h, w = 11, 14
    p = PathIndex(5, (h, w))
    edge = torch.rand(2, 1, h, w)
    edge[0, 0, 3, 5], edge[1, 0, 6, 7] = 0.0, 1.0
    aff = edge_to_affinity(edge, p)
    assert aff.shape == (2, 34, p.n_src)
    for b in range(2):
        for k, (dy, dx) in enumerate(p.offsets.tolist()):
            for s, src in enumerate(p.src_indices.tolist()):
                y, x = divmod(src, w)
                m = max(edge[b, 0, y + py, x + px].item() for py, px in _geometric_path(dy, dx))
                assert aff[b, k, s].item() == pytest.approx(1 - m, abs=1e-7)


def test_edge_to_affinity_extremes_and_grad():
    p = PathIndex(5, (9, 12))
    assert torch.equal(edge_to_affinity(torch.zeros(1, 1, 9, 12), p), torch.ones(1, 34, p.n_src))
    assert torch.equal(edge_to_affinity(torch.ones(1, 1, 9, 12), p), torch.zeros(1, 34, p.n_src))
    edge = torch.rand(3, 1, 9, 12, requires_grad=True)
    edge_to_affinity(edge, p).sum().backward()
    assert edge.grad.sum().item() == pytest.approx(-3 * 34 * p.n_src)  # each pair: -1 at its path's max


def test_to_device_returns_self():
    p = PathIndex(5, (10, 10))
    assert p.to("cpu") is p and p.path_indices[0].device.type == "cpu"
