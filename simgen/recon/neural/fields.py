"""The neural fields of PanopticRecon++ (paper sections IV and V-A/B; equations 5-8, 12-15, 18, 22).

All points are world coordinates in metres, ``(N, 3)`` float32. Each field normalises them to the
unit cube of the scene's bounding box before its hash encoding.

* :class:`SDFField`: hash grid + MLP -> signed distance ``s`` (eq. 12), positive in free space.
* :class:`SemanticField`: separate hash grid + MLP -> ``C`` class logits (eq. 14).
* :class:`InstanceTokens`: ``N`` learnable query tokens (Gaussian centre, quaternion, log-scale,
  feature ``f_q``, class feature ``F_i``) in a fixed-capacity buffer with an ``active`` mask, so
  pruning and splitting (section IV-C) never change parameter shapes or optimiser state layout.
* :func:`instance_probs`: per-point instance probabilities ``l_I`` (eq. 6-8, 15) from the instance
  feature field ``f_k`` and the tokens; with ``spatial_prior=False`` the Panoptic Lifting baseline
  (softmax over token ids of ``f_q . f_k``, eq. 3).
* :func:`panoptic_probs`: the parameter-free panoptic head (eq. 18).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simgen.recon.neural.hashgrid import HashGridSpec, make_hashgrid
from simgen.render.rasterize import quat_to_rotmat


class Box(nn.Module):
    """Axis-aligned scene box; ``normalise(p)`` maps it onto ``[0, 1]^3`` (clamped)."""

    def __init__(self, lo, hi):
        super().__init__()
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32).reshape(3))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32).reshape(3))

    def normalise(self, p: torch.Tensor) -> torch.Tensor:
        return ((p - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)


class SDFField(nn.Module):
    """Signed distance ``s(p)`` (metres), eq. 12: ``h_G([x01, Psi_G(p)])``.

    Geometric initialisation (SAL, Atzmon & Lipman 2020): softplus MLP whose output starts as the signed
    distance to a sphere around the box centre with radius ``init_radius`` (metres). ``inside_out=True``
    makes the inside of the sphere free space (positive), which suits rooms scanned from within. The
    encoding's weights in the first layer start at zero so the initial surface is the clean sphere.
    """

    def __init__(
        self,
        box: Box,
        spec: HashGridSpec,
        device,
        backend="auto",
        hidden=64,
        layers=2,
        init_radius=1.0,
        inside_out=True,
    ):
        super().__init__()
        self.box = box
        self.enc = make_hashgrid(spec, device, backend)
        dims = [3 + self.enc.out_dim] + [hidden] * layers + [1]
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        # the MLP sees coordinates centred on the box (metres), so the initial sphere is centred there
        self.register_buffer("centre", (box.hi + box.lo) / 2)
        with torch.no_grad():
            for k, lin in enumerate(self.lins):
                last = k == len(self.lins) - 1
                if last:
                    nn.init.normal_(lin.weight, mean=math.sqrt(math.pi) / math.sqrt(dims[k]), std=1e-4)
                    nn.init.constant_(lin.bias, -init_radius)
                    if inside_out:
                        lin.weight.neg_()
                        lin.bias.neg_()
                else:
                    nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(dims[k + 1]))
                    nn.init.zeros_(lin.bias)
                    if k == 0:
                        lin.weight[:, 3:] = 0.0

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """``p`` ``(N, 3)`` world metres -> sdf ``(N,)`` metres."""
        h = torch.cat([p - self.centre, self.enc(self.box.normalise(p)).to(p.dtype)], dim=-1)
        for k, lin in enumerate(self.lins):
            h = lin(h)
            if k < len(self.lins) - 1:
                h = F.softplus(h, beta=100.0)
        return h[:, 0]

    def with_normal(self, p: torch.Tensor, create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """SDF ``(N,)`` and its gradient ``(N, 3)`` w.r.t. ``p`` by autograd (eq. 13)."""
        with torch.enable_grad():
            p = p.detach().requires_grad_(True)
            s = self.forward(p)
            (n,) = torch.autograd.grad(s.sum(), p, create_graph=create_graph)
        return s, n


class HashMLP(nn.Module):
    """Hash grid + small ReLU MLP, ``(N, 3)`` metres -> ``(N, out)``; ``hidden=0`` returns raw features."""

    def __init__(self, box: Box, spec: HashGridSpec, out: int, device, backend="auto", hidden=64, layers=1):
        super().__init__()
        self.box = box
        self.enc = make_hashgrid(spec, device, backend)
        if hidden <= 0:
            self.mlp = nn.Identity()
            self.out_dim = self.enc.out_dim
        else:
            mods: list[nn.Module] = []
            d = self.enc.out_dim
            for _ in range(layers):
                mods += [nn.Linear(d, hidden), nn.ReLU()]
                d = hidden
            mods.append(nn.Linear(d, out))
            self.mlp = nn.Sequential(*mods)
            self.out_dim = out

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.enc(self.box.normalise(p)))


class InstanceTokens(nn.Module):
    """``capacity`` query tokens, of which those with ``active`` True take part (section IV).

    Parameters (leading dim = capacity): ``centre`` (N, 3) metres, ``quat`` (N, 4) (w, x, y, z),
    ``log_scale`` (N, 3) log metres (Gaussian std per principal axis, eq. 5), ``feat`` (N, D) the
    attention feature ``f_q``, ``cls_feat`` (N, H) the instance class feature ``F_i`` (eq. 22).
    Buffers: ``active`` (N,) bool.
    """

    def __init__(self, capacity: int, feat_dim: int, cls_dim: int = 32):
        super().__init__()
        self.centre = nn.Parameter(torch.zeros(capacity, 3))
        self.quat = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(capacity, 1))
        self.log_scale = nn.Parameter(torch.zeros(capacity, 3))
        self.feat = nn.Parameter(torch.randn(capacity, feat_dim))
        self.cls_feat = nn.Parameter(torch.randn(capacity, cls_dim) * 0.1)
        self.register_buffer("active", torch.zeros(capacity, dtype=torch.bool))

    @property
    def capacity(self) -> int:
        return self.centre.shape[0]

    def covariance(self) -> torch.Tensor:
        """``(N, 3, 3)`` Sigma = R Lambda Lambda^T R^T (eq. 5)."""
        R = quat_to_rotmat(self.quat)
        L = torch.exp(self.log_scale)
        return (R * L[:, None, :] ** 2) @ R.transpose(1, 2)

    def spatial_prior(self, p: torch.Tensor) -> torch.Tensor:
        """G (eq. 8): ``P(p | p_q, Sigma) / P(p_q | p_q, Sigma)`` = ``exp(-0.5 mahalanobis^2)``; ``(P, N)``."""
        R = quat_to_rotmat(self.quat)  # (N, 3, 3); columns are the principal axes
        d = p[:, None, :] - self.centre[None]  # (P, N, 3)
        local = torch.einsum("pnk,nkj->pnj", d, R) / torch.exp(self.log_scale)[None]  # (P, N, 3)
        return torch.exp(-0.5 * local.square().sum(-1))


def instance_probs(
    f_k: torch.Tensor, tokens: InstanceTokens, p: torch.Tensor, spatial_prior: bool = True
) -> torch.Tensor:
    """Per-point instance probabilities ``l_I`` ``(P, N)`` in [0, 1] (eq. 15); inactive tokens give 0.

    With the spatial prior (PanopticRecon++): ``A_ij = sigmoid(f_q . f_k) * G`` (eq. 7 modulated by
    eq. 8): N independent binary predictions, not normalised over tokens (the paper's normalisation
    over all scene points in eq. 6 cannot be evaluated per ray batch; see docs/method.md).
    Without it (Panoptic Lifting's ID field, eq. 3): a softmax over the active tokens of ``f_q . f_k``.

    Args:
        f_k: ``(P, D)`` instance features of the points.
        p: ``(P, 3)`` the points (world metres).
    """
    logits = f_k.float() @ tokens.feat.t()  # (P, N)
    act = tokens.active[None]
    if spatial_prior:
        out = torch.sigmoid(logits) * tokens.spatial_prior(p.float())
        return torch.where(act, out, torch.zeros_like(out))
    logits = logits.masked_fill(~act, float("-inf"))
    out = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(out, nan=0.0)  # no active token at all -> zeros


def panoptic_probs(
    sem_probs: torch.Tensor, ins_probs: torch.Tensor, stuff_idx, thing_idx, active: torch.Tensor
) -> torch.Tensor:
    """Parameter-free panoptic head (eq. 18): ``[l_stuff, sum(l_thing) * l_I / sum(l_I)]``.

    Args:
        sem_probs: ``(P, C)`` semantic distribution (softmax of eq. 14), classes in contiguous order.
        ins_probs: ``(P, N)`` instance probabilities ``l_I`` (eq. 15).
        stuff_idx, thing_idx: contiguous class indices of stuff / thing classes (long tensors).
        active: ``(N,)`` bool, the tokens taking part.

    Returns:
        ``(P, S + N)`` distribution over ``S`` stuff classes then ``N`` tokens; sums to 1 (eq. 19-21).
        Where every ``l_I`` is ~0 (far from all Gaussians) the conditional ``l_I / sum l_I`` is 0/0; it is
        taken uniform over the active tokens (the limit for equal ``l_I``). With no active token the
        thing mass is dropped and the rest renormalised, so the output is always a distribution.
    """
    stuff = sem_probs[:, stuff_idx]
    thing = sem_probs[:, thing_idx].sum(-1, keepdim=True)
    denom = ins_probs.sum(-1, keepdim=True)
    cond = ins_probs / denom.clamp_min(1e-8)
    act = active.to(ins_probs.dtype)
    uniform = act[None] / act.sum().clamp_min(1.0)
    cond = torch.where(denom > 1e-8, cond, uniform.expand_as(cond))
    out = torch.cat([stuff, thing * cond], dim=-1)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-8)


class ClassHead(nn.Module):
    """``h_SI`` (eq. 22): token class features ``F_i`` ``(N, H)`` -> thing-class logits ``(N, C_thing)``."""

    def __init__(self, in_dim: int, n_thing: int, hidden: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_thing))

    def forward(self, cls_feat: torch.Tensor) -> torch.Tensor:
        return self.mlp(cls_feat)
