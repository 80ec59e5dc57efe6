"""The whole PanopticRecon++ model: SDF, semantic and instance fields, tokens, class head, sharpness xi."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from simgen.recon.neural.config import NeuralConfig
from simgen.recon.neural.fields import (
    Box,
    ClassHead,
    HashMLP,
    InstanceTokens,
    SDFField,
    instance_probs,
    panoptic_probs,
)
from simgen.recon.neural.hashgrid import HashGridSpec


class PanopticModel(nn.Module):
    """Fields of one scene. ``classes``: category id per contiguous class, ``n_stuff`` stuff ones first."""

    def __init__(
        self, cfg: NeuralConfig, lo: np.ndarray, hi: np.ndarray, classes: list[int], n_stuff: int, device
    ):
        super().__init__()
        self.cfg = cfg
        self.classes = list(classes)
        self.n_stuff = n_stuff
        self.box = Box(lo, hi)
        geo = HashGridSpec(cfg.geo_levels, 2, cfg.geo_log2_table, cfg.base_res, cfg.geo_max_res)
        seg = HashGridSpec(cfg.seg_levels, 2, cfg.seg_log2_table, cfg.base_res, cfg.seg_max_res)
        radius = cfg.init_radius or float(np.linalg.norm(np.asarray(hi) - np.asarray(lo))) / 4
        self.sdf = SDFField(self.box, geo, device, cfg.backend, cfg.hidden, 2, radius, inside_out=True)
        self.sem = HashMLP(self.box, seg, len(classes), device, cfg.backend, cfg.hidden, 1)
        # instance field: raw hash features are the keys f_k (the paper replaces the MLP by attention)
        self.ins = HashMLP(self.box, seg, 0, device, cfg.backend, hidden=0)
        self.tokens = InstanceTokens(cfg.max_tokens, self.ins.out_dim)
        self.cls_head = ClassHead(self.tokens.cls_feat.shape[1], max(1, len(classes) - n_stuff))
        self.log_xi = nn.Parameter(torch.tensor(math.log(cfg.xi_init)))
        self.register_buffer("stuff_idx", torch.arange(n_stuff))
        self.register_buffer("thing_idx", torch.arange(n_stuff, len(classes)))
        self.to(device)

    def xi(self, frac: float) -> torch.Tensor:
        """S-density sharpness at training progress ``frac`` in [0, 1]."""
        if self.cfg.xi_mode == "scheduled":
            x = math.exp(
                math.log(self.cfg.xi_init) + frac * (math.log(self.cfg.xi_final) - math.log(self.cfg.xi_init))
            )
            return torch.tensor(x, device=self.log_xi.device)
        return torch.exp(self.log_xi).clamp(1.0, 1e4)

    def segment(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic distribution ``(P, C)`` (eq. 14, softmax) and instance probabilities ``(P, N)`` (eq. 15)."""
        sem = torch.softmax(self.sem(p).float(), dim=-1)
        ins = instance_probs(self.ins(p).float(), self.tokens, p, self.cfg.spatial_prior)
        return sem, ins

    def panoptic(self, sem: torch.Tensor, ins: torch.Tensor) -> torch.Tensor:
        """``(P, S + N)`` panoptic distribution (eq. 18)."""
        return panoptic_probs(sem, ins, self.stuff_idx, self.thing_idx, self.tokens.active)

    def token_classes(self) -> torch.Tensor:
        """``(N,)`` contiguous class index (into ``classes``) of every token slot, from ``h_SI`` (eq. 22).

        A scene without thing classes has no active token; its slots then point at the last class so
        that indexing stays in range (their probabilities are zero).
        """
        cls = self.cls_head(self.tokens.cls_feat).argmax(-1) + self.n_stuff
        return cls.clamp_max(len(self.classes) - 1)

    @torch.no_grad()
    def label_points(self, p: torch.Tensor, chunk: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
        """Panoptic labels of points ``(P, 3)``: contiguous class ``(P,)`` and token slot ``(P,)`` (-1 stuff).

        With the panoptic head (section V-B, Fig. 5): the panoptic distribution of eq. 18 is grouped by
        class -- stuff entries as they are, each token's mass added to its class from ``h_SI`` -- and the
        point takes the most probable class; a thing point then takes the most probable token of that
        class. (A plain argmax over the ``S + N`` entries would let a stuff class win wherever several
        overlapping tokens split the thing mass, fragmenting things; docs/method.md.)
        Without the head (baseline): semantic argmax, then the instance argmax where the class is a thing.
        """
        cls_out = [torch.zeros(0, dtype=torch.long, device=p.device)]  # no points -> empty labels
        tok_out = [torch.zeros(0, dtype=torch.long, device=p.device)]
        tok_cls = self.token_classes()
        active = self.tokens.active
        S = self.n_stuff
        for s in range(0, len(p), chunk):
            sem, ins = self.segment(p[s : s + chunk])
            if self.cfg.panoptic_head:
                pan = self.panoptic(sem, ins)
                grouped = torch.zeros_like(sem)
                grouped[:, :S] = pan[:, :S]
                grouped.index_add_(1, tok_cls, pan[:, S:] * active[None])
                cls = grouped.argmax(-1)
                is_thing = cls >= S
                own = (tok_cls[None] == cls[:, None]) & active[None]
                tok = pan[:, S:].masked_fill(~own, -1.0).argmax(-1)
                tok = torch.where(is_thing & own.any(-1), tok, torch.full_like(tok, -1))
            else:
                cls = sem.argmax(-1)
                is_thing = cls >= S
                masked = ins.masked_fill(~active[None], -1.0)
                tok = torch.where(is_thing, masked.argmax(-1), torch.full_like(cls, -1))
                if not bool(active.any()):
                    tok = torch.full_like(cls, -1)
            cls_out.append(cls)
            tok_out.append(tok)
        return torch.cat(cls_out), torch.cat(tok_out)

    def param_groups(self, cfg: NeuralConfig) -> list[dict]:
        """Optimiser groups: hash tables (eps 1e-15 as Instant-NGP), MLPs, tokens, log xi."""
        grids = [m.enc for m in (self.sdf, self.sem, self.ins)]
        grid_params = [q for g in grids for q in g.parameters()]
        ids = {id(q) for q in grid_params} | {id(q) for q in self.tokens.parameters()} | {id(self.log_xi)}
        mlp = [q for q in self.parameters() if id(q) not in ids]
        return [
            {"params": grid_params, "lr": cfg.lr_grid, "eps": 1e-15, "name": "grid"},
            {"params": mlp, "lr": cfg.lr_mlp, "name": "mlp"},
            {"params": list(self.tokens.parameters()), "lr": cfg.lr_token, "name": "tokens"},
            {"params": [self.log_xi], "lr": cfg.lr_xi, "name": "xi"},
        ]
