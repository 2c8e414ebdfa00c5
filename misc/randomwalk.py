"""IRN's random walk (``propagate_to_edge``) as a 69-point stencil, plus the dense n x n reference.

Both compute the same thing. With a boundary map B (h, w) in [0, 1], the affinity of pixel i and
j = i + δ, for each half-plane offset δ within ``radius`` (``misc.indexing.search_offsets``), is
a_ij = 1 - max B along the path of δ from i (``misc.indexing.offset_path``); pairs leaving the image
have affinity 0 (IRN pads B with 1.0). A is symmetric with a unit diagonal, Â = A^β elementwise,
d = colsum(Â) and T = Â diag(1/d) is column-stochastic. Each class seed v_c = x_c ⊙ (1 - B) is walked
to v_c T^t with t = 2^exp_times (row vector times matrix). One step is y_j = (Σ_i v_i Â_ij) / d_j.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from misc.indexing import PathIndex, edge_to_affinity, offset_path, search_offsets


def random_walk(x: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10, exp_times: int = 8
                ) -> torch.Tensor:
    """Walk class maps over the boundary-aware affinity, 2^exp_times stencil steps, never building n x n.

    x: (K, h, w) with edge (h, w) or (1, h, w); or a batch (N, K, h, w) with edge (N, 1, h, w). Runs on
    the inputs' device and dtype (the weights are computed in float64 first); 68 shifted multiply-adds of
    (N, K, h, w) per step, 2^exp_times steps. Returns x's shape: x ⊙ (1 - B) times
    T^(2^exp_times), equal to ``dense_random_walk`` up to float rounding.

    A step is written y_j = v_j + Σ_s w_s(j) (v_{j+s} - v_j) over the 68 neighbour shifts s, which is
    (vÂ)_j / d_j because the self weight 1/d_j is 1 - Σ_s w_s(j). This form keeps constants fixed exactly
    and cuts the fp32 drift over 256 steps about 20-fold: a few 1e-6 of the max at 64x80, where the plain
    form and the dense fp32 walk are off by 4-9e-5.
    """
    batched = x.dim() == 4
    xb = x if batched else x.unsqueeze(0)
    n, _, h, w = xb.shape
    edge = edge.reshape(n, 1, h, w).to(xb.dtype)
    weights, shifts = _stencil(edge.double(), radius, beta)
    weights = weights.to(xb.dtype)
    r = radius - 1
    buf = F.pad(xb * (1 - edge), (r, r, r, r))  # zero ring: shifted views never leave the buffer
    inner = buf[:, :, r:r + h, r:r + w]
    for _ in range(2 ** exp_times):
        step = torch.zeros_like(inner)
        for k, (dy, dx) in enumerate(shifts):
            step.addcmul_(weights[:, k:k + 1], buf[:, :, r + dy:r + dy + h, r + dx:r + dx + w] - inner)
        inner.add_(step)
    out = inner.clone()
    return out if batched else out[0]


def _stencil(edge: torch.Tensor, radius: int, beta: float) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Column-normalised neighbour weights from a boundary map edge (N, 1, h, w).

    Returns (weights (N, 68, h, w), shifts): weights[:, k, j] = Â_{j+s, j} / d_j for s = shifts[k], the 34
    half-plane offsets δ then their negatives -δ; d_j = 1 + Σ_k Â_{j+s, j} (the 1 is the diagonal).
    Pairs leaving the image weigh 0.
    """
    h, w = edge.shape[-2:]
    r = radius - 1
    padded = F.pad(edge[:, 0], (r, r, 0, r), value=1.0)  # pixel (y, x) sits at (y, x + r)
    offsets = search_offsets(radius)
    forward = []  # Â between j and j + δ, at j
    for dy, dx in offsets:
        on_path = [padded[:, y:y + h, r + x:r + x + w] for y, x in offset_path(dy, dx)]
        forward.append((1 - torch.stack(on_path).amax(0)).pow(beta))
    forward = torch.stack(forward, 1)
    ring = F.pad(forward, (r, r, r, r))
    backward = [ring[:, k, r - dy:r - dy + h, r - dx:r - dx + w] for k, (dy, dx) in enumerate(offsets)]  # Â_{j-δ, j}
    full = torch.cat([forward, torch.stack(backward, 1)], 1)
    shifts = offsets + [(-dy, -dx) for dy, dx in offsets]
    return full / (1 + full.sum(1, keepdim=True)), shifts


def dense_affinity(edge: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """The dense affinity matrix A (n, n), n = h·w, of a boundary map edge (h, w), as IRN assembles it.

    Reference for tests and benchmarks: pairs come from ``PathIndex`` on B padded with 1.0 by radius - 1 on
    the left, right and bottom (its sources are then exactly the image pixels, row-major), affinities from
    ``edge_to_affinity``. A is symmetric with ones on the diagonal; pairs leaving the image are absent (0).
    """
    h, w = edge.shape
    r = radius - 1
    index = PathIndex(radius, (h + r, w + 2 * r)).to(edge.device)
    aff = edge_to_affinity(F.pad(edge, (r, r, 0, r), value=1.0)[None, None], index)[0]
    dst_y, dst_x = index.dst_indices // (w + 2 * r), index.dst_indices % (w + 2 * r) - r
    inside = (dst_y < h) & (dst_x >= 0) & (dst_x < w)
    src = torch.arange(h * w, device=edge.device).expand_as(inside)[inside]
    dst = (dst_y * w + dst_x)[inside]
    a = torch.eye(h * w, dtype=edge.dtype, device=edge.device)
    a[src, dst] = aff[inside]
    a[dst, src] = aff[inside]
    return a


def dense_transition(edge: torch.Tensor, radius: int = 5, beta: float = 10) -> torch.Tensor:
    """Reference transition matrix T = Â diag(1/colsum(Â)), Â = dense_affinity^β. Returns (n, n); columns sum to 1."""
    a = dense_affinity(edge, radius).pow(beta)
    return a / a.sum(0, keepdim=True)


def dense_random_walk(x: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10, exp_times: int = 8
                      ) -> torch.Tensor:
    """The naive reference walk, as IRN's ``propagate_to_edge`` does it: T squared exp_times times, then
    (x ⊙ (1 - B)) T^(2^exp_times). For tests and benchmarks only: it needs n² memory and
    exp_times·2n³ FLOPs for n = h·w.

    x: (K, h, w); edge: (h, w) or (1, h, w). Returns (K, h, w).
    """
    k, h, w = x.shape
    edge = edge.reshape(h, w).to(x.dtype)
    t = dense_transition(edge, radius, beta)
    for _ in range(exp_times):
        t = t @ t
    return ((x * (1 - edge)).reshape(k, h * w) @ t).reshape(k, h, w)
