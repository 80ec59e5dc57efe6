"""Compile the CPU kernels ahead of their first use (``scripts/setup.sh`` runs :func:`compile_kernels`).

numba compiles a kernel for each argument type signature on its first call and caches the machine code
next to the module (``cache=True``; ``__pycache__``, or ``NUMBA_CACHE_DIR``). Compiling the Gaussian
rasterizer's parallel kernels takes tens of seconds, which a fresh checkout would otherwise pay inside the
first render, server start or test; after this every process loads them from the cache.
"""

from __future__ import annotations

import numpy as np


def compile_kernels() -> list[str]:
    """Call every compiled kernel once, in float32 and float64, on a few-element scene.

    Returns the names of the kernels run (empty without numba: the numpy / torch paths need no compiling).
    """
    from simgen.render import rasterize_numba

    if not rasterize_numba.numba_available():
        return []
    import torch

    from simgen.data.camera import Intrinsics
    from simgen.folders import PanopticMesh
    from simgen.render.caster import FastCaster
    from simgen.render.rasterize import rasterize
    from simgen.render.zbuffer import ZBufferCaster

    done = []
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        n = 4
        means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.2 + torch.tensor([0.0, 0.0, 2.0], dtype=dtype)
        quats = torch.randn(n, 4, generator=g, dtype=dtype)
        scales = torch.full((n, 3), 0.1, dtype=dtype)
        opac = torch.full((n,), 0.5, dtype=dtype)
        K = torch.tensor([[8.0, 0.0, 4.0], [0.0, 8.0, 3.0], [0.0, 0.0, 1.0]], dtype=dtype)
        vm = torch.eye(4, dtype=dtype)
        rgb = torch.rand(n, 3, generator=g, dtype=dtype)
        sh = torch.rand(n, 16, 3, generator=g, dtype=dtype)
        feats = torch.rand(n, 2, generator=g, dtype=dtype)
        for colors, features in ((rgb, None), (rgb, feats), (sh, None), (sh, feats)):
            rasterize(means, quats, scales, opac, colors, vm, K, 8, 6, features=features, backend="numba")
        done.append(f"gaussian rasterizer ({str(dtype).removeprefix('torch.')})")
    tri = PanopticMesh(
        np.array([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]]),
        np.array([[0, 1, 2]]),
        np.full((3, 3), 128, np.uint8),
        np.zeros(3, np.int64),
        np.ones(3, np.int64),
    )
    K = Intrinsics(8.0, 8.0, 4.0, 3.0, 8, 6)
    FastCaster(tri).render(K, np.eye(4))
    done.append("mesh caster")
    ZBufferCaster(tri).render(K, np.eye(4))
    done.append("mesh z-buffer")
    return done
