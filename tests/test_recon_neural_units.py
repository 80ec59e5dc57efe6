"""Unit checks of the neural builder's pieces against hand-computed or analytic answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simgen.recon.neural import losses as L
from simgen.recon.neural.config import NeuralConfig, neural_config
from simgen.recon.neural.fields import InstanceTokens, instance_probs, panoptic_probs
from simgen.recon.neural.matching import match_masks
from simgen.recon.neural.render import (
    alpha_to_weights,
    render_depth,
    render_values,
    sample_along_rays,
    sdf_to_alpha,
)
from simgen.recon.neural.tokens import TokenStats, adjust_tokens, iom_matrix
from simgen.render.rasterize import quat_to_rotmat

# ---------------------------------------------------------------- rendering (eq. 10-11)

CENTRE = torch.tensor([0.1, -0.05, 2.0])
RADIUS = 0.5


def sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    """Signed distance to a ball, positive outside (free space), as the SDF field's convention."""
    return (p - CENTRE).norm(dim=-1) - RADIUS


def ray_sphere(d: torch.Tensor) -> torch.Tensor:
    """First hit distance of unit rays ``d`` ``(R, 3)`` from the origin (NaN on a miss)."""
    b = d @ CENTRE
    disc = b**2 - CENTRE.dot(CENTRE) + RADIUS**2
    return b - torch.sqrt(disc)


def _rays(n: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * spread
    return torch.nn.functional.normalize(torch.cat([xy, torch.ones(n, 1)], dim=1), dim=1)


@pytest.mark.parametrize("depth_guided", [True, False])
def test_s_density_rendering_of_a_sphere_gives_its_depth(depth_guided):
    d = _rays(200, 0.3)
    truth = ray_sphere(d)
    # keep rays meeting the ball at a steep angle, so trunc behind the surface is well inside it
    cos = -((d * truth[:, None] - CENTRE) / RADIUS * d).sum(-1)
    d, truth = d[cos > 0.5][:64], truth[cos > 0.5][:64]
    assert len(d) == 64 and torch.isfinite(truth).all()
    if depth_guided:  # the training sampler: observed depth (here exact) guides the samples
        t = sample_along_rays(truth, 0.05, 6.0, 16, 32, 0.1, torch.Generator().manual_seed(1))
    else:  # uniform, dense
        t = torch.linspace(0.05, 6.0, 2000).expand(64, -1)
    pts = d[:, None, :] * t[..., None]
    w = alpha_to_weights(sdf_to_alpha(sphere_sdf(pts.reshape(-1, 3)).reshape(t.shape), 300.0))
    assert torch.allclose(w.sum(-1), torch.ones(64), atol=1e-2)
    for normalise in (True, False):
        err = (render_depth(w, t, normalise) - truth).abs()
        assert err.max() < (0.005 if normalise else 0.01), (
            f"normalise={normalise}: max depth error {err.max():.4f} m"
        )


def test_rays_missing_the_sphere_stay_transparent():
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.0, -1.0, 0.1]]), dim=1)
    assert torch.isnan(ray_sphere(d)).all()
    t = torch.linspace(0.05, 6.0, 500).expand(2, -1)
    w = alpha_to_weights(
        sdf_to_alpha(sphere_sdf((d[:, None] * t[..., None]).reshape(-1, 3)).reshape(2, -1), 300.0)
    )
    assert w.sum(-1).max() < 1e-2


def test_soft_density_biases_unnormalised_depth_and_normalising_removes_it():
    """Why render_depth normalises (docs/method.md): with a soft xi and samples ending trunc behind the
    surface, the ray's opacity stays below 1 and the plain sum is pulled towards the camera."""
    d = _rays(16, 0.2)
    truth = ray_sphere(d)
    t = sample_along_rays(truth, 0.05, 6.0, 16, 32, 0.1, torch.Generator().manual_seed(2))
    sdf = sphere_sdf((d[:, None] * t[..., None]).reshape(-1, 3)).reshape(t.shape)
    w = alpha_to_weights(sdf_to_alpha(sdf, 20.0))
    assert w.sum(-1).max() < 0.95
    plain = (render_depth(w, t, normalise=False) - truth).abs().mean()
    normed = (render_depth(w, t, normalise=True) - truth).abs().mean()
    assert plain > 0.1 and normed < 0.03


def test_sampler_puts_dense_samples_in_the_truncation_band():
    depth = torch.tensor([2.0, 0.0, 1.0])
    t = sample_along_rays(depth, 0.1, 5.0, 8, 16, 0.1, torch.Generator().manual_seed(3))
    assert t.shape == (3, 24)
    assert torch.all(t[:, 1:] >= t[:, :-1])
    assert t[0].min() >= 0.1 and t[0].max() <= 2.1 + 1e-6
    assert ((t[0] - 2.0).abs() <= 0.1 + 1e-6).sum() >= 16
    assert t[1].max() <= 5.0 and t[1].max() > 3.0  # no depth: spread over [near, far]


def test_render_values_keeps_distributions():
    w = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.0, 0.0]])
    vals = torch.softmax(torch.randn(2, 3, 4), dim=-1)
    out = render_values(w, vals)
    assert torch.allclose(out[0].sum(), torch.tensor(1.0))
    assert torch.allclose(out[0], (vals[0, 0] + 2 * vals[0, 1]) / 3)


# ---------------------------------------------------------------- attention (eq. 6-8, 15) and head (eq. 18)


def _tokens(n: int = 3, dim: int = 4) -> InstanceTokens:
    tok = InstanceTokens(n, dim)
    with torch.no_grad():
        tok.active[:] = True
    return tok


def test_spatial_prior_is_the_normalised_gaussian_ratio():
    tok = _tokens(1)
    angle = math.pi / 3  # rotate the Gaussian about z
    with torch.no_grad():
        tok.centre[0] = torch.tensor([1.0, 2.0, 3.0])
        tok.quat[0] = torch.tensor([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)])
        tok.log_scale[0] = torch.log(torch.tensor([0.5, 0.1, 0.2]))
    R = quat_to_rotmat(tok.quat)[0]
    axis0 = R[:, 0]
    assert torch.allclose(axis0, torch.tensor([math.cos(angle), math.sin(angle), 0.0]), atol=1e-6)
    p = torch.stack([tok.centre[0], tok.centre[0] + 0.5 * axis0, tok.centre[0] + 0.1 * R[:, 1]]).detach()
    G = tok.spatial_prior(p)[:, 0]
    torch.testing.assert_close(G, torch.tensor([1.0, math.exp(-0.5), math.exp(-0.5)]), atol=1e-5, rtol=1e-5)
    # the same through the full density ratio P(p_k | p_q, Sigma) / P(p_q | p_q, Sigma) (eq. 8)
    mvn = torch.distributions.MultivariateNormal(tok.centre[0].detach(), tok.covariance()[0].detach())
    q = tok.centre[0].detach() + torch.tensor([0.2, -0.1, 0.15])
    ratio = torch.exp(mvn.log_prob(q) - mvn.log_prob(tok.centre[0].detach()))
    torch.testing.assert_close(tok.spatial_prior(q[None])[0, 0], ratio, atol=1e-5, rtol=1e-4)


def test_instance_probs_with_and_without_the_prior():
    tok = _tokens(3, 4)
    with torch.no_grad():
        tok.active[2] = False
        tok.centre[:] = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]])
    f_k = torch.randn(5, 4)
    p = torch.randn(5, 3)
    with_prior = instance_probs(f_k, tok, p, spatial_prior=True)
    want = torch.sigmoid(f_k @ tok.feat.t()) * tok.spatial_prior(p)
    torch.testing.assert_close(with_prior[:, :2], want[:, :2].detach())
    assert torch.all(with_prior[:, 2] == 0) and torch.all((with_prior >= 0) & (with_prior <= 1))
    ids = instance_probs(f_k, tok, p, spatial_prior=False)  # Panoptic Lifting's ID field (eq. 3)
    torch.testing.assert_close(ids.sum(-1), torch.ones(5))
    assert torch.all(ids[:, 2] == 0)


def test_panoptic_head_hand_case():
    sem = torch.tensor([[0.2, 0.1, 0.3, 0.4]])  # stuff 0, stuff 1, thing A, thing B
    ins = torch.tensor([[0.6, 0.2, 0.9]])
    active = torch.tensor([True, True, False])
    ins = ins * active  # inactive tokens give l_I = 0 (instance_probs)
    out = panoptic_probs(sem, ins, torch.tensor([0, 1]), torch.tensor([2, 3]), active)
    torch.testing.assert_close(out, torch.tensor([[0.2, 0.1, 0.7 * 0.75, 0.7 * 0.25, 0.0]]))


def test_panoptic_head_degenerate_cases():
    sem = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    stuff, thing = torch.tensor([0]), torch.tensor([1, 2])
    zero = torch.zeros(2, 2)
    uniform = panoptic_probs(sem, zero, stuff, thing, torch.tensor([True, True]))
    torch.testing.assert_close(uniform, torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.4, 0.4]]))
    none = panoptic_probs(sem, zero, stuff, thing, torch.tensor([False, False]))
    torch.testing.assert_close(none, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_panoptic_head_is_a_distribution_eq_19_21():
    g = torch.Generator().manual_seed(4)
    sem = torch.softmax(torch.randn(200, 6, generator=g), -1)
    ins = torch.rand(200, 7, generator=g) * (torch.rand(200, 1, generator=g) > 0.1)
    active = torch.tensor([True, True, False, True, True, True, False])
    out = panoptic_probs(sem, ins * active, torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5]), active)
    assert torch.all(out >= 0)
    torch.testing.assert_close(out.sum(-1), torch.ones(200))
    # the thing mass is exactly the semantic thing mass (eq. 20-21)
    torch.testing.assert_close(out[:, 2:].sum(-1), sem[:, 2:].sum(-1))


# ---------------------------------------------------------------- matching (eq. 27-29)


def test_hungarian_recovers_a_permutation():
    g = torch.Generator().manual_seed(5)
    R, Lm = 400, 5
    lab = torch.randint(0, Lm + 1, (R,), generator=g)  # label Lm = background
    target = (lab[:, None] == torch.arange(Lm)[None]).float()
    perm = torch.tensor([4, 0, 6, 2, 1])  # mask l -> token perm[l]; tokens 3, 5 get noise, 7 inactive
    pred = torch.rand(R, 8, generator=g) * 0.3
    pred[:, perm] = (target * 0.8 + torch.rand(R, Lm, generator=g) * 0.15).clamp(0, 1)
    pred[:, 7] = target[:, 0]  # a perfect copy on an inactive slot must not be used
    active = torch.ones(8, dtype=torch.bool)
    active[7] = False
    mi, ti, best = match_masks(pred, target, active)
    assert sorted(mi.tolist()) == list(range(Lm))
    assert {int(m): int(t) for m, t in zip(mi, ti, strict=True)} == dict(enumerate(perm.tolist()))
    assert best.tolist() == perm.tolist()


def test_matching_with_more_masks_than_tokens_and_none():
    target = torch.eye(4).repeat_interleave(10, 0)  # 40 rays, 4 masks
    pred = torch.zeros(40, 3)
    pred[:10, 1] = 1.0
    pred[20:30, 0] = 1.0
    mi, ti, best = match_masks(pred, target, torch.tensor([True, True, False]))
    assert len(mi) == 2 and dict(zip(mi.tolist(), ti.tolist(), strict=True)) == {0: 1, 2: 0}
    mi, ti, best = match_masks(pred, target, torch.zeros(3, dtype=torch.bool))
    assert len(mi) == 0 and best.tolist() == [-1] * 4


# ---------------------------------------------------------------- losses (eq. 24-33)


def test_sdf_loss_cases():
    trunc, beta = 0.1, 5.0
    b = torch.tensor([[0.05, 0.5, 0.5, 0.5, float("nan")]])
    s = torch.tensor([[0.02, 0.3, -0.2, 0.7, 9.0]])
    # band |0.02-0.05|; free 0.3 <= b: 0; free negative: exp(1)-1; beyond the bound: 0.2; NaN: skipped
    want = (0.03 + 0.0 + math.expm1(1.0) + 0.2) / 4
    assert L.sdf_loss(s, b, trunc, beta).item() == pytest.approx(want, rel=1e-5)


def test_dice_bce_class_and_nll_losses():
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.5], [0.0, 0.5]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # pair 0 exact: 1 - (2*2+1)/(2+2+1) = 0; pair 1: 1 - (2*1+1)/(1+2+1) = 0.25
    assert L.dice_loss(pred, target, eps=1.0).item() == pytest.approx(0.125)
    assert L.bce_loss(target, target).item() == pytest.approx(0.0, abs=1e-5)
    assert L.instance_loss(pred, target, use_dice=False).item() == pytest.approx(
        L.bce_loss(pred, target).item()
    )
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert L.nll_loss(probs, torch.tensor([0, -1, 1])).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.8)) / 2
    )
    assert L.nll_loss(probs, torch.tensor([-1, -1, -1])).item() == 0.0
    logits = torch.tensor([[10.0, -10.0]])
    assert L.class_loss(logits, torch.tensor([0]), 2).item() < 1e-3
    assert L.class_loss(logits, torch.tensor([1]), 2).item() > 5
    assert L.eikonal_loss(torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])).item() == pytest.approx(0.5)
    # unmatched tokens: BCE against an empty mask, mean over rays, summed over tokens (not averaged away)
    unmatched = torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.0, 0.75]])
    assert L.unmatched_loss(unmatched).item() == pytest.approx(-math.log(0.5) - 0.5 * math.log(0.25))
    assert L.unmatched_loss(torch.zeros(4, 3)).item() == 0.0


# ---------------------------------------------------------------- dynamic tokens (section IV-C)


def _token_setup(capacity: int = 6, active: int = 4):
    tok = InstanceTokens(capacity, 4)
    with torch.no_grad():
        tok.active[:active] = True
        tok.centre[:active] = torch.arange(active, dtype=torch.float32)[:, None].repeat(1, 3)
    opt = torch.optim.Adam(tok.parameters(), lr=0.1)
    (tok.centre.sum() + tok.feat.sum() + tok.quat.sum() + tok.log_scale.sum() + tok.cls_feat.sum()).backward()
    opt.step()
    return tok, opt


def _surface_probs(masks: list[list[int]], n_points: int, capacity: int) -> torch.Tensor:
    probs = torch.zeros(n_points, capacity)
    for k, pts in enumerate(masks):
        probs[pts, k] = 0.9
    return probs


def test_iom_matrix():
    m = torch.zeros(10, 3, dtype=torch.bool)
    m[:6, 0] = True
    m[:3, 1] = True
    m[8:, 2] = True
    iom = iom_matrix(m)
    torch.testing.assert_close(iom[1, 0], torch.tensor(1.0))
    torch.testing.assert_close(iom[0, 1], torch.tensor(0.5))
    assert iom[2, 0] == 0 and iom[0, 2] == 0


def test_prune_useless_and_duplicate_tokens():
    tok, opt = _token_setup()
    stats = TokenStats(6)
    stats.assigned[:] = [10, 10, 10, 1, 0, 0]  # token 3 is rarely assigned
    # token 1's mask lies inside token 0's (enclosing pattern); token 2 is separate
    probs = _surface_probs(
        [list(range(0, 40)), list(range(5, 20)), list(range(50, 70)), list(range(80, 90))], 100, 6
    )
    res = adjust_tokens(
        tok,
        opt,
        stats,
        probs,
        min_assign=2,
        iom_threshold=0.7,
        split_patience=3,
        rng=np.random.default_rng(0),
    )
    assert res == {"pruned_useless": 1, "pruned_duplicate": 1, "split": 0}
    assert tok.active.tolist() == [True, False, True, False, False, False]
    assert opt.state[tok.centre]["exp_avg"][1].abs().sum() == 0  # changed slots start fresh
    assert opt.state[tok.centre]["exp_avg"][0].abs().sum() > 0
    assert stats.assigned.sum() == 0  # statistics restart after an adjustment


def test_split_clones_a_token_preferred_by_two_masks():
    tok, opt = _token_setup(capacity=5, active=2)
    stats = TokenStats(5)
    cents = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], np.float32)
    for _ in range(3):  # masks 0 and 1 of a frame both prefer token 0, token 0 goes to mask 0
        stats.record(np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), cents)
    assert stats.split_events[0] == 3
    probs = _surface_probs([list(range(0, 30)), list(range(40, 60))], 100, 5)
    res = adjust_tokens(
        tok,
        opt,
        stats,
        probs,
        min_assign=1,
        iom_threshold=0.7,
        split_patience=3,
        rng=np.random.default_rng(0),
    )
    assert res["split"] == 1 and res["pruned_useless"] == 0
    assert tok.active.tolist() == [True, True, True, False, False]
    torch.testing.assert_close(tok.centre[2], torch.tensor([2.0, 2.0, 2.0]))  # placed at the losing mask
    torch.testing.assert_close(tok.log_scale[2], tok.log_scale[0])
    assert not torch.equal(tok.feat[2], tok.feat[0])  # perturbed so the clone can diverge
    assert opt.state[tok.feat]["exp_avg"][2].abs().sum() == 0


def test_never_prunes_every_token():
    tok, opt = _token_setup(capacity=3, active=2)
    stats = TokenStats(3)
    stats.assigned[:] = [0, 1, 0]
    res = adjust_tokens(tok, opt, stats, torch.zeros(10, 3), 5, 0.7, 3, np.random.default_rng(0))
    assert tok.active.tolist() == [False, True, False]
    assert res["pruned_useless"] == 2


# ---------------------------------------------------------------- config


def test_presets_and_validation():
    fast = neural_config("fast")
    assert fast.steps == 2500 and fast.device == "auto"
    assert neural_config("quality", steps=7).steps == 7
    with pytest.raises(ValueError, match="unknown preset"):
        NeuralConfig(preset="slow").resolved()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neural.max_tokens"):
        NeuralConfig(n_tokens=10, max_tokens=5)
    with pytest.raises(ValueError, match="neural.seg_start"):
        NeuralConfig(seg_start=1.5)
    with pytest.raises(ValueError, match="neural.lr_grid"):
        NeuralConfig(lr_grid=-1.0)


# ---------------------------------------------------------------- point labelling (section V-B)


def _label_model(sem: torch.Tensor, ins: torch.Tensor, tok_cls: list[int], panoptic_head: bool = True):
    from simgen.recon.neural.model import PanopticModel

    cfg = neural_config("fast", geo_levels=2, seg_levels=2, geo_log2_table=8, seg_log2_table=8, max_tokens=3,
                        n_tokens=3, device="cpu", panoptic_head=panoptic_head)  # fmt: skip
    model = PanopticModel(cfg, [0, 0, 0], [1, 1, 1], classes=[1, 2, 10, 11], n_stuff=2, device="cpu")
    with torch.no_grad():
        model.tokens.active[:] = True
    model.segment = lambda p: (sem, ins)  # fixed field outputs
    model.token_classes = lambda: torch.tensor(tok_cls)
    return model


def test_labels_group_token_mass_by_class():
    # stuff 0.35 / 0.05, things 0.6 (class index 2); tokens 0 and 1 are class 2, token 2 class 3
    sem = torch.tensor([[0.35, 0.05, 0.6, 0.0], [0.7, 0.1, 0.1, 0.1]])
    ins = torch.tensor([[0.5, 0.4, 0.0], [0.9, 0.0, 0.1]])
    model = _label_model(sem, ins, [2, 2, 3])
    pan = model.panoptic(sem, ins)
    assert pan[0].argmax() == 0  # a plain argmax over [stuff, tokens] would call point 0 stuff
    cls, tok = model.label_points(torch.zeros(2, 3))
    assert cls.tolist() == [2, 0] and tok.tolist() == [0, -1]
    # baseline without the head: semantic argmax, then instance argmax for things
    cls, tok = _label_model(sem, ins, [2, 2, 3], panoptic_head=False).label_points(torch.zeros(2, 3))
    assert cls.tolist() == [2, 0] and tok.tolist() == [0, -1]


def test_labels_without_thing_classes():
    from simgen.recon.neural.model import PanopticModel

    cfg = neural_config("fast", geo_levels=2, seg_levels=2, geo_log2_table=8, seg_log2_table=8, device="cpu")
    model = PanopticModel(cfg, [0, 0, 0], [1, 1, 1], classes=[1, 2], n_stuff=2, device="cpu")
    cls, tok = model.label_points(torch.rand(50, 3))
    assert set(cls.tolist()) <= {0, 1} and tok.tolist() == [-1] * 50


# ---------------------------------------------------------------- mesh labelling clean-up


def grid_faces(rows: int, cols: int) -> np.ndarray:
    """Triangles of a rows x cols vertex grid (vertex r * cols + c)."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    v = (r * cols + c).reshape(-1)
    return np.concatenate([np.stack([v, v + 1, v + cols], 1), np.stack([v + 1, v + cols + 1, v + cols], 1)])


def test_merge_fragments_joins_small_same_class_pieces_only():
    from simgen.recon.neural.extract import merge_fragments

    rows, cols = 4, 30
    faces = grid_faces(rows, cols)
    # columns: A 0-9 | piece of A 10-11 | stuff 12-13 | C 14-23 | other-class piece 24-25 | stuff 26-29
    col_label = np.array([0] * 10 + [1] * 2 + [-1] * 2 + [2] * 10 + [3] * 2 + [-1] * 4)
    col_class = np.array([5] * 12 + [0] * 2 + [5] * 10 + [6] * 2 + [0] * 4)
    label, semantic = np.tile(col_label, rows), np.tile(col_class, rows)
    out, n = merge_fragments(faces, semantic, label, max_ratio=0.25)
    expect = label.copy()
    expect[label == 1] = 0
    assert n == 1 and np.array_equal(out, expect)
    assert np.array_equal(merge_fragments(faces, semantic, label, max_ratio=0.0)[0], label)
    # two touching instances of one class and similar size are two objects: no merge
    touching = np.tile(np.array([0] * 15 + [2] * 15), rows)
    assert merge_fragments(faces, np.full(rows * cols, 5), touching, 0.25)[1] == 0
    # a piece above the ratio stays its own instance
    big_piece = np.tile(np.array([0] * 10 + [1] * 4 + [-1] * 16), rows)
    assert merge_fragments(faces, np.full(rows * cols, 5), big_piece, 0.25)[1] == 0
