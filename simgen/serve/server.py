"""Process model of ``simgen serve``: waitress threads, optionally N pre-forked processes.

Rendering holds the GIL for most of a request (numpy around the embree cast), so threads of one
process overlap only I/O. ``--workers N`` therefore forks N processes that share ONE listening socket
bound by the parent (the pre-fork model gunicorn uses): the kernel hands each new connection to
whichever process accepts first, so an idle process picks up work while a busy one is rendering.
Each process runs its own waitress server with a bounded number of threads and builds its own
ray-casting BVH after the fork (embree's thread pool does not survive ``fork``); the mesh arrays read
before the fork are shared copy-on-write.

The parent only supervises: it forwards SIGINT/SIGTERM, and restarts a worker that dies (giving up if
workers keep dying right after start, which means the scene cannot be served).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from pathlib import Path

from simgen.serve.config import ServeConfig
from simgen.serve.scene import RenderScene, gaussians_file, load_render_scene

log = logging.getLogger("simgen.serve")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv4 or IPv6 from ``host``); OSError with a clear message if taken."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(1024)
    return sock


def single_thread_torch() -> None:
    """One intra-op thread for the CPU Gaussian rasterizer in this process.

    Requests already run in parallel (render threads, worker processes); torch's own pool on top of them
    oversubscribes the cores: with 2 threads a render was ~10x slower on a loaded 2-core machine. Called
    before the Gaussians are loaded too, so a parent that forks workers never starts an OpenMP pool
    (which does not survive ``fork``).
    """
    import torch

    torch.set_num_threads(1)


def _serve_socket(scene: RenderScene, cfg: ServeConfig, sock: socket.socket) -> None:
    import waitress

    from simgen.serve.app import create_app

    if scene.rgb_source == "gaussians":
        single_thread_torch()
        from simgen.render.rasterize_numba import set_render_threads

        # One render's compiled stages split over the cores this worker has to itself: with as many
        # workers as cores, one thread each (requests are already parallel across the workers).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        set_render_threads(max(1, cores // max(1, cfg.workers)))
    scene.warm()
    app = create_app(scene, cfg)
    if not cfg.quiet:
        gl = f" ({scene.raster.renderer})" if scene.mesh_backend == "raster" else ""
        print(
            f"[simgen serve] worker {os.getpid()} ready, mesh backend {scene.mesh_backend}{gl}",
            file=sys.stderr,
            flush=True,
        )
    waitress.serve(
        app,
        sockets=[sock],
        threads=cfg.threads(),
        # Flask answers oversized bodies with a JSON 413; waitress's own cap is only a backstop.
        max_request_body_size=cfg.max_body_bytes * 2,
        connection_limit=max(100, 4 * cfg.threads()),
        channel_timeout=60,
        ident="simgen-serve",
        _quiet=True,
    )


def _worker_main(scene: RenderScene, cfg: ServeConfig, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _serve_socket(scene, cfg, sock)


def serve(out_dir: str | Path, cfg: ServeConfig) -> int:
    """Load ``out_dir`` and serve it until SIGINT/SIGTERM. Returns the process exit code."""
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    if gaussians_file(out_dir, cfg.rgb) is not None:
        single_thread_torch()
    scene = load_render_scene(out_dir, warm=False, rgb=cfg.rgb, backend=cfg.backend)
    scene.gaussians_device = cfg.gaussians_device
    if workers == 1:
        scene.warm()
    sock = bind_socket(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    rgb = "mesh colours" if scene.gaussians is None else f"{len(scene.gaussians)} Gaussians"
    print(
        f"[simgen serve] {scene.source} ({len(scene.mesh.faces)} faces, world frame {scene.world_frame}, "
        f"RGB from {rgb}) on http://{url_host}:{port}/ with {workers} process(es) x {cfg.threads()} threads",
        file=sys.stderr,
        flush=True,
    )
    if workers == 1:
        try:
            _serve_socket(scene, cfg, sock)
        except KeyboardInterrupt:
            pass
        return 0
    return _supervise(scene, cfg, sock, workers)


def _supervise(scene: RenderScene, cfg: ServeConfig, sock: socket.socket, workers: int) -> int:
    ctx = mp.get_context("fork")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start():
        p = ctx.Process(target=_worker_main, args=(scene, cfg, sock), daemon=True)
        p.start()
        return p, time.monotonic()

    procs = [start() for _ in range(workers)]
    quick_deaths = 0
    code = 0
    while not stopping:
        time.sleep(0.2)
        for i, (p, t0) in enumerate(procs):
            if p.is_alive() or stopping:
                continue
            quick_deaths = quick_deaths + 1 if time.monotonic() - t0 < 10 else 0
            print(f"[simgen serve] worker {p.pid} exited with {p.exitcode}", file=sys.stderr, flush=True)
            if quick_deaths >= 3 * workers:
                print("[simgen serve] workers keep dying at start; giving up", file=sys.stderr, flush=True)
                stopping, code = True, 1
                break
            procs[i] = start()
    for p, _ in procs:
        if p.is_alive():
            p.terminate()
    for p, _ in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    sock.close()
    return code
