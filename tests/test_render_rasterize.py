"""The tiled pure-torch Gaussian rasterizer against a brute-force per-pixel reference (forward and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.rasterize_reference import rasterize_reference

from simgen.render import rasterize as R
from simgen.render.rasterize import project_gaussians, rasterize

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
@pytest.mark.parametrize("autograd", [False, True])
def test_forward_matches_reference(opaque, autograd):
    W, H = 24, 16
    means, quats, scales, opac, colors, feats = _scene(30, seed=3, opaque=opaque)
    vm, K = _camera(W, H, 18.0)
    ref = rasterize_reference(means, quats, scales, opac, colors, vm, K, W, H, features=feats)
    if autograd:  # an input that needs gradients selects the autograd path; otherwise the no-grad path runs
        means = means.clone().requires_grad_()
    # Several tile sizes and chunk lengths: the image must not depend on either.
    for ts, chunk in ((8, 4), (8, 64), (16, 3), (5, 7), (4, 32), (1, 5)):
        out = rasterize(
            means, quats, scales, opac, colors, vm, K, W, H, features=feats, tile_size=ts, chunk=chunk
        )
        assert out["rgb"].requires_grad == autograd
        for key in ("rgb", "depth", "alpha", "features"):
            assert out[key].shape == ref[key].shape
            err = (out[key].detach() - ref[key]).abs().max().item()
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
        assert (full["rgb"].detach() - ref["rgb"]).abs().max() > 1e-4


@pytest.mark.parametrize("autograd", [False, True])
def test_float32_matches_float64_reference(autograd):
    W, H = 24, 16
    means, quats, scales, opac, colors, feats = _scene(30, seed=5)
    vm, K = _camera(W, H, 18.0)
    ref = rasterize_reference(means, quats, scales, opac, colors, vm, K, W, H)
    f = [t.float() for t in (means, quats, scales, opac, colors, vm, K)]
    f[0].requires_grad_(autograd)
    out = rasterize(*f, W, H)
    assert (out["rgb"].detach().double() - ref["rgb"]).abs().max() < 1e-4
    assert (out["alpha"].detach().double() - ref["alpha"]).abs().max() < 1e-4


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
    from simgen.render.sh import rgb_to_sh0

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


def _wide_scene(n: int, seed: int, dtype=torch.float64):
    """Gaussians around and beyond a 96x64 view: some behind the camera, some off-screen, some far; opacities
    from 0.001 (below 1/255 everywhere) to 1 (alpha clamped at 0.99); thin and round shapes."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([4.0, 3.0, 2.5], dtype=dtype)
    means[:, 2] += 2.5
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.randn(n, 3, generator=g, dtype=dtype) * 0.8 - 2.7)
    opac = torch.rand(n, generator=g, dtype=dtype)
    opac[:20] = 1.0
    opac[20:40] = 0.001
    sh = torch.randn(n, 16, 3, generator=g, dtype=dtype) * 0.3
    feats = torch.rand(n, 5, generator=g, dtype=dtype)
    return means, quats, scales, opac, sh, feats


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nograd_path_matches_autograd_path(dtype):
    # The inference path (exact tile lists, pre-culled projection, SH on visible Gaussians only) must give the
    # autograd path's image, radii and projected means on a scene that exercises every culling rule.
    W, H = 96, 64
    means, quats, scales, opac, sh, feats = _wide_scene(3000, seed=1, dtype=dtype)
    vm, K = _camera(W, H, 70.0, dtype=dtype)
    with torch.no_grad():
        fast = rasterize(means, quats, scales, opac, sh, vm, K, W, H, features=feats, sh_degree=2)
    slow = rasterize(
        means.clone().requires_grad_(), quats, scales, opac, sh, vm, K, W, H, features=feats, sh_degree=2
    )
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for key in ("rgb", "depth", "alpha", "features"):
        err = (fast[key] - slow[key].detach()).abs().max().item()
        assert err < tol * (10 if key == "depth" else 1), (key, err)
    assert torch.equal(fast["radii"], slow["radii"])
    # Both paths pre-cull with a conservative screen bound: it must keep every Gaussian the full projection of
    # all of them keeps (same radii), including the ones just off the image edges.
    full = project_gaussians(means, quats, scales, vm, K, W, H)
    assert torch.equal(fast["radii"], full["radii"])
    assert torch.allclose(fast["means2d"], slow["means2d"].detach(), atol=1e-3)
    assert 0 < (fast["radii"] > 0).sum() < len(means) // 2  # most are culled, some are not
    assert fast["alpha"].max() > 0.9 and fast["alpha"].min() < 0.5


def test_nograd_path_handles_empty_and_bad_input():
    W, H = 16, 12
    means, quats, scales, opac, colors, feats = _scene(10, seed=4)
    vm, K = _camera(W, H, 12.0)
    with torch.no_grad():
        empty = rasterize(
            means[:0], quats[:0], scales[:0], opac[:0], colors[:0], vm, K, W, H, features=feats[:0]
        )
        assert empty["rgb"].shape == (H, W, 3) and empty["features"].shape == (H, W, 2)
        assert empty["alpha"].abs().max() == 0 and len(empty["radii"]) == 0
        with pytest.raises(ValueError, match="features"):
            rasterize(means, quats, scales, opac, colors, vm, K, W, H, features=feats[:5])
        with pytest.raises(ValueError, match="colors"):
            rasterize(means, quats, scales, opac, colors[:, :2], vm, K, W, H)


def test_tile_lists_cover_every_contributing_pixel():
    # Brute force over pixels: every pixel centre with sigma <= cut lies in a listed tile of its Gaussian, and
    # the lists are shorter than the bounding boxes' (the point of listing per tile row).
    g = torch.Generator().manual_seed(3)
    m, ts, W, H = 300, 4, 64, 48
    u = torch.rand(m, generator=g, dtype=torch.float64) * 80 - 8
    v = torch.rand(m, generator=g, dtype=torch.float64) * 64 - 8
    ang = torch.rand(m, generator=g, dtype=torch.float64) * math.pi
    s1 = torch.rand(m, generator=g, dtype=torch.float64) * 6 + 0.4
    s2 = s1 * (torch.rand(m, generator=g, dtype=torch.float64) * 0.9 + 0.05)  # down to very thin ellipses
    cs, sn = torch.cos(ang), torch.sin(ang)
    a = cs * cs * s1 * s1 + sn * sn * s2 * s2
    b = cs * sn * (s1 * s1 - s2 * s2)
    c = sn * sn * s1 * s1 + cs * cs * s2 * s2
    det = a * c - b * b
    cut = torch.rand(m, generator=g, dtype=torch.float64) * 4.5 + 0.01
    n_tx, n_ty = W // ts, H // ts
    gauss, tile = R._tile_lists(u, v, (c / det, -b / det, a / det), (a, b, c), cut, ts, n_tx, n_ty)
    listed = torch.zeros(m, n_tx * n_ty, dtype=torch.bool)
    listed[gauss, tile] = True
    py, px = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    dx = px.reshape(1, -1) - u[:, None]
    dy = py.reshape(1, -1) - v[:, None]
    sigma = 0.5 * (c[:, None] * dx * dx - 2 * b[:, None] * dx * dy + a[:, None] * dy * dy) / det[:, None]
    hit = sigma <= cut[:, None]  # (m, pixels)
    pix_tile = ((py // ts) * n_tx + px // ts).reshape(-1).long()
    need = torch.zeros(m, n_tx * n_ty, dtype=torch.bool)
    need[torch.nonzero(hit, as_tuple=True)[0], pix_tile[torch.nonzero(hit, as_tuple=True)[1]]] = True
    assert need.sum() > 1000
    assert not (need & ~listed).any()  # nothing missing
    assert listed.sum() <= need.sum() * 1.25  # and little extra
    # The bounding boxes of the same ellipses touch clearly more tiles.
    hw, hh = torch.sqrt(2 * cut * a), torch.sqrt(2 * cut * c)
    x0 = torch.clamp(torch.floor((u - hw) / ts), 0, n_tx)
    x1 = torch.clamp(torch.ceil((u + hw) / ts), 0, n_tx)
    y0 = torch.clamp(torch.floor((v - hh) / ts), 0, n_ty)
    y1 = torch.clamp(torch.ceil((v + hh) / ts), 0, n_ty)
    assert ((x1 - x0) * (y1 - y0)).sum() > 1.3 * listed.sum()


def test_means2d_gets_the_view_space_gradient():
    # Densification reads out["means2d"].grad: the blending must run through the returned tensor (the autograd
    # path projects only on-screen candidates and gathers their rows from it).
    W, H = 96, 64
    means, quats, scales, opac, sh, _ = _wide_scene(600, seed=2)
    vm, K = _camera(W, H, 70.0)
    out = rasterize(means.clone().requires_grad_(), quats, scales, opac, sh, vm, K, W, H)
    out["means2d"].retain_grad()
    (out["rgb"].sum() + out["alpha"].sum()).backward()
    grad = out["means2d"].grad.abs().sum(dim=1)
    assert out["means2d"].shape == (600, 2)
    assert (grad[out["radii"] == 0] == 0).all()
    assert (grad[out["radii"] > 0] > 0).float().mean() > 0.5
    # Moving a visible Gaussian's mean changes the image as its 2D gradient says (finite difference along x
    # in camera space, which moves means2d by fx / z per metre and changes the footprint only slightly).
    i = int(torch.nonzero((out["radii"] > 4) & (grad > 1e-3))[0])
    u0 = out["means2d"][i].detach()
    moved = means.clone()
    step = 1e-4
    moved[i] += step * vm[0, :3]  # +x in camera coordinates
    out2 = rasterize(moved, quats, scales, opac, sh, vm, K, W, H)
    du = (out2["means2d"][i] - u0)[0]
    fd = ((out2["rgb"].sum() + out2["alpha"].sum()) - (out["rgb"].sum() + out["alpha"].sum()).detach()) / du
    assert abs(fd - out["means2d"].grad[i, 0]) < 0.2 * abs(out["means2d"].grad[i, 0]) + 1e-3
