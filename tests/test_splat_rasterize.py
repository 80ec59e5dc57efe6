"""The tiled pure-torch Gaussian rasterizer against a brute-force per-pixel reference (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from simgen.splat import rasterize as R
from simgen.splat.rasterize import project_gaussians, rasterize, rasterize_reference

# One thread: on the shared 2-core machine, 2 OpenMP threads under load ran 30x slower (spin waits).
torch.set_num_threads(1)


def _scene(n: int, seed: int, opaque: bool = False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.35 + torch.tensor([0.0, 0.0, 3.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.25 + 0.08
    if opaque:  # enough overlap of near-opaque Gaussians to trigger early termination
        opac = torch.rand(n, generator=g, dtype=dtype) * 0.1 + 0.9
    else:
        opac = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    feats = torch.rand(n, 2, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors, feats


def _camera(width: int, height: int, f: float, dtype=torch.float64):
    K = torch.tensor([[f, 0.0, width / 2 + 0.3], [0.0, f, height / 2 - 0.2], [0.0, 0.0, 1.0]], dtype=dtype)
    # A camera rotated about y and shifted, so viewmat is not the identity.
    a = torch.tensor(0.15, dtype=dtype)
    vm = torch.eye(4, dtype=dtype)
    vm[:3, :3] = torch.tensor(
        [[torch.cos(a), 0.0, torch.sin(a)], [0.0, 1.0, 0.0], [-torch.sin(a), 0.0, torch.cos(a)]], dtype=dtype
    )
    vm[:3, 3] = torch.tensor([0.1, -0.05, 0.2], dtype=dtype)
    return vm, K


@pytest.mark.parametrize("opaque", [False, True])
def test_forward_matches_reference(opaque):
    W, H = 24, 16
    means, quats, scales, opac, colors, feats = _scene(30, seed=3, opaque=opaque)
    vm, K = _camera(W, H, 18.0)
    ref = rasterize_reference(means, quats, scales, opac, colors, vm, K, W, H, features=feats)
    # Several tile sizes and chunk lengths: the image must not depend on either.
    for ts, chunk in ((8, 4), (8, 64), (16, 3), (5, 7)):
        out = rasterize(
            means, quats, scales, opac, colors, vm, K, W, H, features=feats, tile_size=ts, chunk=chunk
        )
        for key in ("rgb", "depth", "alpha", "features"):
            assert out[key].shape == ref[key].shape
            err = (out[key] - ref[key]).abs().max().item()
            assert err < 1e-4, (key, ts, chunk, err)
    assert ref["alpha"].max() > 0.5 and (ref["alpha"] == 0).any()  # a non-trivial image with background
    if opaque:
        # The case must actually hit early termination: without it the image changes.
        old = R.T_MIN
        try:
            R.T_MIN = 0.0
            full = rasterize(means, quats, scales, opac, colors, vm, K, W, H, tile_size=8)
        finally:
            R.T_MIN = old
        assert (full["rgb"] - ref["rgb"]).abs().max() > 1e-4


def test_float32_matches_float64_reference():
    W, H = 24, 16
    means, quats, scales, opac, colors, feats = _scene(30, seed=5)
    vm, K = _camera(W, H, 18.0)
    ref = rasterize_reference(means, quats, scales, opac, colors, vm, K, W, H)
    f = [t.float() for t in (means, quats, scales, opac, colors, vm, K)]
    out = rasterize(*f, W, H, tile_size=8)
    assert (out["rgb"].double() - ref["rgb"]).abs().max() < 1e-4
    assert (out["alpha"].double() - ref["alpha"]).abs().max() < 1e-4


def test_gradients_match_reference_autograd():
    W, H = 24, 16
    means, quats, scales, opac, colors, feats = _scene(30, seed=7, opaque=True)
    vm, K = _camera(W, H, 18.0)
    w = torch.rand(H, W, 3 + 1 + 1 + 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grads(fn, **kw):
        leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors, feats)]
        out = fn(*leaves[:5], vm, K, W, H, features=leaves[5], **kw)
        img = torch.cat(
            [out["rgb"], out["depth"][..., None], out["alpha"][..., None], out["features"]], dim=-1
        )
        (img * w).sum().backward()
        return [t.grad for t in leaves]

    g_tile = grads(rasterize, tile_size=8, chunk=5)
    g_ref = grads(rasterize_reference)
    for name, a, b in zip(
        ("means", "quats", "scales", "opacities", "colors", "features"), g_tile, g_ref, strict=True
    ):
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (name, (a - b).abs().max().item())


def test_gradcheck_tiny():
    W, H = 8, 6
    means, quats, scales, opac, colors, _ = _scene(3, seed=11)
    means = means * 0.5 + torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64)
    vm, K = _camera(W, H, 6.0)

    def f(m, s, o, c, q):
        out = rasterize(m, q, s, o, c, vm, K, W, H, tile_size=4, chunk=2)
        return out["rgb"], out["depth"], out["alpha"]

    inputs = tuple(t.clone().requires_grad_() for t in (means, scales, opac, colors, quats))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_sh_colors_and_background():
    W, H = 16, 12
    means, quats, scales, opac, colors, _ = _scene(20, seed=2)
    vm, K = _camera(W, H, 12.0)
    from simgen.splat.sh import rgb_to_sh0

    sh = torch.zeros(20, 16, 3, dtype=torch.float64)
    sh[:, 0] = rgb_to_sh0(colors)
    a = rasterize(means, quats, scales, opac, sh, vm, K, W, H)
    b = rasterize(means, quats, scales, opac, colors, vm, K, W, H)
    assert torch.allclose(a["rgb"], b["rgb"], atol=1e-12)  # DC-only SH is view-independent
    bg = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)
    c = rasterize(means, quats, scales, opac, colors, vm, K, W, H, background=bg)
    assert torch.allclose(c["rgb"], b["rgb"] + (1 - b["alpha"])[..., None] * bg)


def test_culling_and_bad_input():
    W, H = 16, 12
    means, quats, scales, opac, colors, _ = _scene(10, seed=4)
    vm, K = _camera(W, H, 12.0)
    behind = means.clone()
    behind[:, 2] = -3.0
    out = rasterize(behind, quats, scales, opac, colors, vm, K, W, H)
    assert out["alpha"].abs().max() == 0 and (out["radii"] == 0).all()
    proj = project_gaussians(means, quats, scales, vm, K, W, H)
    assert (proj["radii"] > 0).any()
    with pytest.raises(ValueError, match="quats"):
        rasterize(means, quats[:, :3], scales, opac, colors, vm, K, W, H)
    with pytest.raises(ValueError, match="backend"):
        rasterize(means, quats, scales, opac, colors, vm, K, W, H, backend="opengl")


@pytest.mark.skipif(
    not (torch.cuda.is_available() and R.gsplat_available()),
    reason="needs a CUDA GPU and gsplat installed (gsplat has no CPU rasterizer); run on a GPU machine",
)
def test_matches_gsplat_cuda():
    W, H = 64, 48
    means, quats, scales, opac, colors, feats = _scene(200, seed=9, dtype=torch.float32)
    vm, K = _camera(W, H, 40.0, dtype=torch.float32)
    cpu = rasterize(means, quats, scales, opac, colors, vm, K, W, H, features=feats, backend="torch")
    cuda = [t.cuda() for t in (means, quats, scales, opac, colors, vm, K)]
    gpu = rasterize(*cuda, W, H, features=feats.cuda(), backend="gsplat")
    assert gpu["backend"] == "gsplat"
    for key in ("rgb", "alpha", "features"):
        # gsplat clamps alpha at 0.999 (3DGS: 0.99) and blends 3-sigma box tails: small local differences.
        diff = (gpu[key].cpu() - cpu[key]).abs()
        assert diff.mean() < 5e-3 and diff.max() < 0.1, (key, diff.mean().item(), diff.max().item())
