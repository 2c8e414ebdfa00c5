"""misc.randomwalk: the 69-point stencil walk against the dense IRN reference, and the reference itself."""
from __future__ import annotations

import pytest
import torch

from misc.randomwalk import dense_affinity, dense_random_walk, dense_transition, random_walk


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's max magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _inputs(k: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random class maps (k, h, w) and a boundary map (h, w) with exact zeros and ones in it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(k, h, w, generator=g)
    edge = torch.rand(h, w, generator=g) ** 2
    edge[torch.rand(h, w, generator=g) < 0.15] = 0.0
    edge[torch.rand(h, w, generator=g) < 0.1] = 1.0
    return x, edge


def _brute_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """A straight from the definition, pair by pair, for tiny maps."""
    h, w = edge.shape
    a = torch.eye(h * w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for dy in range(0, radius):
                for dx in range(-radius + 1, radius):
                    if not (dy > 0 or dx > 0) or dy * dy + dx * dx >= radius ** 2:
                        continue
                    if not (y + dy < h and 0 <= x + dx < w):
                        continue
                    path = [(py, px) for py in range(dy + 1) for px in range(min(0, dx), max(0, dx) + 1)
                            if (dy * px - dx * py) ** 2 / (dy * dy + dx * dx) < 1]
                    v = 1 - max(edge[y + py, x + px].item() for py, px in path)
                    i, j = y * w + x, (y + dy) * w + x + dx
                    a[i, j] = a[j, i] = v
    return a


def test_dense_affinity_matches_definition():
    _, edge = _inputs(1, 6, 7, seed=1)
    assert torch.allclose(dense_affinity(edge.double(), 5), _brute_affinity(edge, 5), atol=1e-12)
    _, edge = _inputs(1, 8, 5, seed=2)
    assert torch.allclose(dense_affinity(edge.double(), 3), _brute_affinity(edge, 3), atol=1e-12)


def test_dense_affinity_structure():
    a = dense_affinity(torch.zeros(11, 11), 5)
    assert torch.equal(a, a.T) and torch.equal(a.diagonal(), torch.ones(121))
    assert int(a[5 * 11 + 5].sum()) == 69  # centre pixel: 68 neighbours + itself
    assert int(a[0].sum()) == 1 + 4 + 5 + 5 + 4 + 3  # top-left corner: itself + the quarter disc, rows dy = 0..4


def test_dense_transition_column_stochastic():
    _, edge = _inputs(1, 7, 9, seed=3)
    t = dense_transition(edge.double(), 5, 10)
    assert (t >= 0).all()
    assert torch.allclose(t.sum(0), torch.ones(63, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("h,w,seed", [(9, 13, 0), (6, 17, 1), (3, 7, 2), (13, 9, 3)])
def test_stencil_equals_dense(h, w, seed):
    x, edge = _inputs(3, h, w, seed)
    ref = dense_random_walk(x.double(), edge.double())
    out = random_walk(x, edge)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert _rel(out, ref) <= 1e-4
    assert _rel(random_walk(x.double(), edge.double()), ref) <= 1e-10


def test_stencil_equals_dense_fp32():
    x, edge = _inputs(3, 9, 13, seed=4)
    assert _rel(random_walk(x, edge), dense_random_walk(x, edge)) <= 1e-4


@pytest.mark.parametrize("radius,beta,exp_times", [(3, 2.0, 4), (5, 10, 0), (4, 10, 3)])
def test_stencil_equals_dense_other_settings(radius, beta, exp_times):
    x, edge = _inputs(2, 8, 11, seed=5)
    ref = dense_random_walk(x.double(), edge.double(), radius, beta, exp_times)
    assert _rel(random_walk(x.double(), edge.double(), radius, beta, exp_times), ref) <= 1e-10


def test_single_step_is_seed_times_t():
    x, edge = _inputs(2, 5, 8, seed=6)
    x, edge = x.double(), edge.double()
    want = (x * (1 - edge)).reshape(2, -1) @ dense_transition(edge)
    assert torch.allclose(random_walk(x, edge, exp_times=0).reshape(2, -1), want, atol=1e-12)


def test_batch_of_two():
    (x0, e0), (x1, e1) = _inputs(3, 7, 10, seed=7), _inputs(3, 7, 10, seed=8)
    out = random_walk(torch.stack([x0, x1]), torch.stack([e0, e1])[:, None])
    assert out.shape == (2, 3, 7, 10)
    for b, (x, e) in enumerate(((x0, e0), (x1, e1))):
        assert _rel(out[b], dense_random_walk(x.double(), e.double())) <= 1e-4


def test_unbatched_edge_shapes_agree():
    x, edge = _inputs(2, 5, 6, seed=9)
    assert torch.equal(random_walk(x, edge), random_walk(x, edge[None]))


def test_one_pixel():
    x, edge = torch.tensor([[[0.8]], [[0.2]]]), torch.tensor([[0.25]])
    assert torch.allclose(random_walk(x, edge), x * 0.75)
    assert torch.allclose(dense_random_walk(x, edge), x * 0.75)


def test_constant_seed_is_fixed():
    _, edge = _inputs(1, 12, 15, seed=10)
    edge = edge.clamp(max=0.9)
    x = 0.6 / (1 - edge)  # seed x * (1 - edge) is 0.6 everywhere
    assert torch.allclose(random_walk(x[None], edge), torch.full((1, 12, 15), 0.6), rtol=1e-5)


def test_degree_weighted_mass_is_conserved():
    x, edge = _inputs(2, 8, 9, seed=11)
    x, edge = x.double(), edge.double()
    d = dense_affinity(edge).pow(10).sum(0)
    seed = (x * (1 - edge)).reshape(2, -1)
    out = random_walk(x, edge).reshape(2, -1)
    assert torch.allclose(out @ d, seed @ d, rtol=1e-10)


def test_boundary_wall_blocks_the_walk():
    h, w = 10, 16
    edge = torch.zeros(h, w)
    edge[:, 7] = 1.0
    x = torch.zeros(1, h, w)
    x[0, :, :7] = 1.0
    out = random_walk(x, edge)
    assert out[0, :, 7:].abs().max() == 0  # nothing crosses the wall
    assert torch.allclose(out[0, :, :7], torch.ones(h, 7), atol=1e-5)  # and the left side stays full


def test_all_boundary_gives_zero():
    x = torch.rand(3, 4, 5)
    assert torch.equal(random_walk(x, torch.ones(4, 5)), torch.zeros(3, 4, 5))
