"""The pure-torch hash grid against a brute-force reference, its gradients, and the tiny-cuda-nn backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simgen.recon.neural.hashgrid import (
    HashGrid,
    HashGridSpec,
    TcnnHashGrid,
    level_layout,
    make_hashgrid,
    scatter_rows,
    tcnn_available,
)

# coarse levels dense, fine levels hashed: both index paths are exercised
SPEC = HashGridSpec(n_levels=6, n_features=2, log2_table=10, base_resolution=4, max_resolution=64)


def reference_encoding(spec: HashGridSpec, table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Instant-NGP encoding written out point by point, corner by corner (python ints for the hash)."""
    log2_b = np.float32(math.log2(spec.per_level_scale))
    out = np.zeros((len(x), spec.n_levels, spec.n_features))
    offset = 0
    for lvl in range(spec.n_levels):
        scale = np.float32(
            np.float32(np.exp2(np.float32(lvl) * log2_b)) * np.float32(spec.base_resolution) - 1
        )
        res = int(math.ceil(scale)) + 1
        dense = res**3 <= 2**spec.log2_table
        size = res**3 if dense else 2**spec.log2_table
        size = -(-size // 8) * 8
        for n, p in enumerate(x.astype(np.float32)):
            pos = p * scale + np.float32(0.5)
            cell = np.floor(pos)
            frac = (pos - cell).astype(np.float64)
            cell = cell.astype(np.int64)
            for corner in range(8):
                bits = [(corner >> d) & 1 for d in range(3)]
                c = [int(cell[d]) + bits[d] for d in range(3)]
                if dense:
                    idx = (c[0] + c[1] * res + c[2] * res * res) % size
                else:
                    h = (c[0] * 1) ^ (c[1] * 2654435761) ^ (c[2] * 805459861)
                    idx = (h & 0xFFFFFFFF) % size
                w = np.prod([frac[d] if bits[d] else 1.0 - frac[d] for d in range(3)])
                out[n, lvl] += w * table[offset + idx]
        offset += size
    assert offset == len(table)
    return out.reshape(len(x), -1)


def test_layout_matches_tcnn_rules():
    scale, res, size, offset = level_layout(SPEC)
    assert np.all(size % 8 == 0)
    assert np.all(size <= 2**SPEC.log2_table)
    assert np.all(np.diff(offset) == size[:-1])
    assert res[0] == SPEC.base_resolution  # scale 3.0 -> ceil 3 + 1
    assert res[-1] == SPEC.max_resolution
    dense = res.astype(float) ** 3 <= 2**SPEC.log2_table
    assert dense[0] and not dense[-1]


def test_torch_grid_equals_brute_force_reference():
    grid = HashGrid(SPEC)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0, generator=g)
    x = torch.rand(60, 3, generator=g)
    x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [0.999, 0.001, 0.5]])
    got = grid(x).detach().numpy()
    want = reference_encoding(SPEC, grid.table.detach().numpy().astype(np.float64), x.numpy())
    assert got.shape == (60, SPEC.out_dim)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_table_gradient_equals_plain_autograd():
    grid = HashGrid(SPEC)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0, generator=g)
    x = torch.rand(500, 3, generator=g)
    upstream = torch.randn(500, SPEC.out_dim, generator=g)
    (grid(x) * upstream).sum().backward()
    fast = grid.table.grad.clone()
    # the same encoding through torch's own indexing backward
    table = grid.table.detach().clone().requires_grad_(True)
    idx, w = grid.indices_and_weights(x)
    plain = (w[..., None] * table[idx.long()]).sum(2).reshape(500, -1)
    (plain * upstream).sum().backward()
    torch.testing.assert_close(fast, table.grad, atol=1e-5, rtol=1e-5)
    assert fast.abs().sum() > 0


def test_gpu_and_cpu_scatters_give_the_same_table_gradient():
    """The GPU's index_add_ scatter (run here on the CPU) and the CPU's bincount scatter agree, rows hit
    many times and never included, for float32 and for float16 gradients (AMP)."""
    g = torch.Generator().manual_seed(3)
    flat = torch.randint(0, 50, (4000,), generator=g)  # 50 rows, each hit ~80 times; rows 50-63 never
    for dtype in (torch.float32, torch.float16):
        grad = torch.randn(1000, 4, 2, generator=g).to(dtype)
        a = scatter_rows(flat, grad, 64, index_add=True)
        b = scatter_rows(flat, grad, 64, index_add=False)
        assert a.dtype == b.dtype == torch.float32 and a.shape == (64, 2)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
        assert a[50:].abs().sum() == 0
        torch.testing.assert_close(a.sum(0), grad.float().reshape(-1, 2).sum(0), atol=1e-3, rtol=1e-5)


def test_input_gradient_matches_finite_differences():
    grid = HashGrid(SPEC)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0, generator=g)
    eps = 1e-4
    x = torch.rand(400, 3, generator=g) * 0.8 + 0.1
    # keep points whose +-eps probes stay inside one cell on every level (the encoding is only C0 across cells)
    scale = torch.from_numpy(level_layout(SPEC)[0])
    frac = torch.frac(x[:, None, :] * scale[None, :, None] + 0.5)
    inside = (torch.minimum(frac, 1 - frac) > 3 * eps * scale[None, :, None]).all(-1).all(-1)
    x = x[inside][:30].requires_grad_(True)
    assert len(x) == 30
    weights = torch.randn(SPEC.out_dim, generator=g)
    (grid(x) @ weights).sum().backward()
    for d in range(3):
        e = torch.zeros(3)
        e[d] = eps
        with torch.no_grad():
            fd = ((grid(x + e) @ weights) - (grid(x - e) @ weights)) / (2 * eps)
        torch.testing.assert_close(x.grad[:, d], fd, atol=2e-2, rtol=2e-2)


def test_make_hashgrid_on_cpu_is_torch_and_refuses_tcnn():
    assert make_hashgrid(SPEC, "cpu", "auto").backend == "torch"
    assert not tcnn_available("cpu")
    with pytest.raises(RuntimeError, match="tinycudann"):
        make_hashgrid(SPEC, "cpu", "tcnn")
    with pytest.raises(ValueError, match="unknown hash-grid backend"):
        make_hashgrid(SPEC, "cpu", "cuda-magic")


@pytest.mark.skipif(not tcnn_available("cuda"), reason="needs tinycudann and a CUDA device")
def test_tcnn_equals_torch_on_same_parameters():
    spec = HashGridSpec(n_levels=12, n_features=2, log2_table=15, base_resolution=16, max_resolution=512)
    tc = TcnnHashGrid(spec).cuda()
    with torch.no_grad():
        tc.enc.params.uniform_(-1.0, 1.0)
    th = HashGrid(spec).cuda()
    with torch.no_grad():
        th.table.copy_(tc.table)
    x = torch.rand(4096, 3, device="cuda")
    torch.testing.assert_close(tc(x), th(x), atol=1e-4, rtol=1e-4)
