"""simgen.render.jit: what setup.sh compiles ahead of use is every CPU kernel."""

from __future__ import annotations

from simgen.render import caster, rasterize_numba, zbuffer
from simgen.render.jit import compile_kernels


def test_compile_kernels_compiles_every_kernel():
    # numba is a dependency (pyproject.toml): without it this fails rather than skips
    assert rasterize_numba.numba_available()

    assert compile_kernels() == [
        "gaussian rasterizer (float32)",
        "gaussian rasterizer (float64)",
        "mesh caster",
        "mesh z-buffer",
    ]
    # The kernels Python calls (the helpers they call are compiled into them).
    names = ("_rot_scale", "_project", "_bin", "_blend", "_eval_sh", "_gather")
    kernels = [getattr(rasterize_numba, n) for n in names] + [*caster._KERNELS, zbuffer._zbuffer]
    assert [k for k in kernels if not k.signatures] == []
