"""Settings of ``simgen serve`` (one dataclass; every field is a ``--flag``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Literal, get_args

RgbMode = Literal["auto", "gaussians", "mesh"]
RGB_MODES: tuple[str, ...] = get_args(RgbMode)  # the one list of RGB sources (flags and the loader)
MeshBackend = Literal["auto", "zbuffer", "raycast", "raster"]  # simgen.render.raster.BACKENDS


@dataclass
class ServeConfig:
    host: str = field(
        default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface)"}
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: pick a free one and print it)"})
    workers: int = field(
        default=1,
        metadata={
            "help": "server processes sharing the listening socket, each with its own copy of the scene "
            "(rendering holds the GIL, so one process uses about one core; 0 = one per CPU core)"
        },
    )
    max_concurrent: int = field(
        default=2,
        metadata={"help": "renders running at once per process (more only interleave under the GIL)"},
    )
    queue_depth: int = field(
        default=8,
        metadata={"help": "render requests allowed to wait per process; beyond that the server answers 503"},
    )
    queue_timeout: float = field(
        default=10.0, metadata={"help": "seconds a queued request waits for a render slot before a 503"}
    )
    max_width: int = field(default=1280, metadata={"help": "largest image width accepted (pixels)"})
    max_height: int = field(default=1024, metadata={"help": "largest image height accepted (pixels)"})
    max_batch: int = field(default=32, metadata={"help": "most poses in one /render/batch request"})
    max_batch_pixels: int = field(
        default=8 * 640 * 480, metadata={"help": "most pixels (poses x width x height) in one batch request"}
    )
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body accepted (bytes)"})
    rgb: RgbMode = field(
        default="auto",
        metadata={
            "help": "RGB source: gaussians = the build's trained gaussians.ply (next to panoptic_mesh.ply, "
            "CPU rasterizer); mesh = vertex colours of the panoptic mesh at the hit point; auto = gaussians "
            "when the file exists, else mesh. Depth and panoptic always come from the mesh"
        },
    )
    backend: MeshBackend = field(
        default="auto",
        metadata={
            "help": "what renders depth, panoptic and mesh RGB: zbuffer = a compiled z-buffer on the CPU "
            "(numba); raycast = embree ray casting on the CPU; raster = OpenGL (moderngl, headless EGL; a "
            "GPU, or Mesa's software rasterizer); auto = raster where a hardware GL device answers, else "
            "zbuffer where numba imports, else raycast"
        },
    )
    gaussians_device: Literal["auto", "cpu", "cuda"] = field(
        default="auto",
        metadata={
            "help": "where Gaussian RGB renders: cuda = gsplat on the GPU; cpu = the compiled CPU rasterizer; "
            "auto = cuda when torch sees a GPU and gsplat imports"
        },
    )
    quiet: bool = field(default=False, metadata={"help": "no per-process start-up messages"})

    def __post_init__(self) -> None:
        if self.backend not in get_args(MeshBackend):
            raise ValueError(f"backend must be one of {get_args(MeshBackend)}, got {self.backend!r}")
        # Said here, before a scene is loaded or a worker forked, rather than by every worker at start-up.
        if self.backend == "zbuffer" and find_spec("numba") is None:
            raise ValueError(
                "backend 'zbuffer' needs numba (pip install numba); use --backend raycast or auto"
            )

    def threads(self) -> int:
        """Waitress threads per process: enough to run, queue and still reject (503) or answer /healthz."""
        return self.max_concurrent + self.queue_depth + 2
