"""The render server's Flask app: ``create_app(render_scene, cfg)``.

Endpoints (see :mod:`simgen.serve.openapi` and docs/serve.md): ``POST /render``, ``POST /render/batch``,
``POST /render/rig`` (several cameras of one robot pose),
``GET /render/{rgb,depth,panoptic}.png``, ``GET /scene``, ``GET /healthz``, ``GET /openapi.json`` and
the viewer page ``GET /``.

Overload control: every render passes :class:`Gate`, which admits at most ``max_concurrent`` renders
and ``queue_depth`` waiting ones per process; anything beyond is answered at once with 503 and
``Retry-After``, so memory stays bounded however many clients connect.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from importlib import resources

import numpy as np
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from simgen.data.io import id_to_rgb
from simgen.data.poses import CONVENTIONS, pose_from_c2w_cv
from simgen.serve import api
from simgen.serve.config import ServeConfig
from simgen.serve.openapi import openapi_spec
from simgen.serve.scene import OUTPUTS, STUFF_ID_OFFSET, RenderScene

log = logging.getLogger("simgen.serve")


class Overloaded(Exception):
    pass


class Gate:
    """Bounded admission: ``max_concurrent`` running + ``queue_depth`` waiting, the rest rejected."""

    def __init__(self, max_concurrent: int, queue_depth: int, timeout: float):
        self._admit = threading.BoundedSemaphore(max_concurrent + queue_depth)
        self._run = threading.BoundedSemaphore(max_concurrent)
        self._timeout = timeout
        self._lock = threading.Lock()
        self.admitted = 0
        self.running = 0
        self.rejected = 0
        self.served = 0

    @contextmanager
    def slot(self):
        if not self._admit.acquire(blocking=False):
            with self._lock:
                self.rejected += 1
            raise Overloaded("render queue full")
        try:
            with self._lock:
                self.admitted += 1
            if not self._run.acquire(timeout=self._timeout):
                with self._lock:
                    self.rejected += 1
                raise Overloaded(f"no render slot within {self._timeout:g} s")
            try:
                with self._lock:
                    self.running += 1
                yield
            finally:
                with self._lock:
                    self.running -= 1
                    self.served += 1
                self._run.release()
        finally:
            with self._lock:
                self.admitted -= 1
            self._admit.release()

    def stats(self) -> dict:
        with self._lock:
            return {
                "running": self.running,
                "waiting": self.admitted - self.running,
                "served": self.served,
                "rejected": self.rejected,
            }


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json", headers=headers)


def _error(status: int, field: str | None, message: str, headers: dict | None = None) -> Response:
    return _json({"error": message, "field": field}, status, headers)


def scene_description(scene: RenderScene, cfg: ServeConfig) -> dict:
    """``GET /scene``: what the server renders and how to ask for it."""
    lo, hi = scene.bounds()
    cam = scene.default_camera()
    return {
        "source": str(scene.source),
        "world_frame": scene.world_frame,
        "world_from_scene": scene.world_from_scene.tolist(),
        "world_bounds": {"min": lo.round(4).tolist(), "max": hi.round(4).tolist()},
        "categories": [
            {"id": c.id, "name": c.name, "isthing": c.isthing}
            for c in sorted(scene.categories.values(), key=lambda c: c.id)
        ],
        "instances": scene.instances,
        "segments": sorted(scene.segments.values(), key=lambda s: s["id"]),
        "stuff_id_offset": STUFF_ID_OFFSET,
        "default_camera": {
            "pose": pose_from_c2w_cv(cam["c2w_cv"], "gazebo"),
            "convention": "gazebo",
            "width": cam["width"],
            "height": cam["height"],
            "hfov_deg": cam["hfov_deg"],
        },
        "mesh": {"vertices": int(len(scene.mesh.vertices)), "faces": int(len(scene.mesh.faces))},
        "mesh_backend": scene.mesh_backend,
        "rgb_mode": cfg.rgb,
        "rgb_source": scene.rgb_source,
        "gaussians": None
        if scene.gaussians is None
        else {"path": str(scene.gaussians_path), "count": len(scene.gaussians)},
        "outputs": list(OUTPUTS),
        "conventions": list(CONVENTIONS),
        "limits": {
            "max_width": cfg.max_width,
            "max_height": cfg.max_height,
            "max_batch": cfg.max_batch,
            "max_batch_pixels": cfg.max_batch_pixels,
            "max_body_bytes": cfg.max_body_bytes,
        },
    }


def create_app(render_scene: RenderScene, cfg: ServeConfig | None = None) -> Flask:
    """The WSGI app serving ``render_scene`` (read-only; shared by all request threads)."""
    cfg = cfg or ServeConfig()
    scene = render_scene
    gate = Gate(cfg.max_concurrent, cfg.queue_depth, cfg.queue_timeout)
    app = Flask("simgen.serve")
    # Flask rejects larger bodies with 413 before reading them (answered as JSON below).
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.extensions["simgen_gate"] = gate
    page = resources.files("simgen.serve").joinpath("static/index.html").read_bytes()
    description = scene_description(scene, cfg)
    spec = openapi_spec(cfg, scene.rgb_source)
    started = time.time()

    def render_all(params: api.RenderParams) -> list[dict]:
        K = params.camera.intrinsics()
        with gate.slot():
            return [scene.render(K, c2w, params.outputs) for c2w in params.c2w_cv]

    def body_json():
        # Content-Type first (415 without reading the body), then the size (MAX_CONTENT_LENGTH: 413 while
        # reading, also for chunked bodies), then nesting depth and JSON (400 naming "body").
        api.require_json(request.content_type)
        return api.parse_json_body(request.get_data(cache=False), request.content_type)

    def respond(results: list[dict], params: api.RenderParams, batch: bool) -> Response:
        if params.encoding == "npz":
            body = api.encode_npz(results, params, scene.world_frame, batch)
            return Response(body, mimetype="application/x-npz", headers={"Cache-Control": "no-store"})
        body = api.encode_multipart(results, params, scene.world_frame, batch)
        return Response(
            body,
            content_type=f"multipart/mixed; boundary={api.MULTIPART_BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )

    @app.errorhandler(api.ApiError)
    def _api_error(e: api.ApiError):
        return _error(e.status, e.field, e.message)

    @app.errorhandler(Overloaded)
    def _overloaded(e: Overloaded):
        return _error(503, None, f"server busy ({e}); retry later", {"Retry-After": "1"})

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        field = "body" if e.code == 413 else None
        resp = _error(e.code or 500, field, e.description or e.name)
        if e.code == 405 and e.valid_methods:
            resp.headers["Allow"] = ", ".join(e.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, None, f"internal error: {type(e).__name__}")

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/healthz")
    def healthz():
        return _json(
            {
                "status": "ok",
                "pid": os.getpid(),
                "uptime_s": round(time.time() - started, 3),
                "world_frame": scene.world_frame,
                **gate.stats(),
            }
        )

    @app.get("/scene")
    def scene_info():
        return _json(description)

    @app.get("/openapi.json")
    def openapi():
        return _json(spec)

    @app.post("/render")
    def render():
        params = api.parse_render_body(body_json(), cfg)
        return respond(render_all(params), params, batch=False)

    @app.post("/render/batch")
    def render_batch():
        params = api.parse_batch_body(body_json(), cfg)
        return respond(render_all(params), params, batch=True)

    @app.post("/render/rig")
    def render_rig():
        rig = api.parse_rig_body(body_json(), cfg)
        with gate.slot():  # one admission for the whole rig: a tick's cameras are rendered together
            results = api.render_rig(scene, rig)
        body = api.encode_rig_npz(results, rig, scene.world_frame)
        return Response(body, mimetype="application/x-npz", headers={"Cache-Control": "no-store"})

    def png_endpoint(output: str):
        params, vis, depth_max = api.parse_png_query(request.args, output, cfg)
        r = render_all(params)[0]
        if output == "rgb":
            img = r["rgb"]
        elif output == "depth":
            img = api.colorize_depth(r["depth"], depth_max) if vis else api.depth_to_mm(r["depth"])
        else:
            img = api.colorize_panoptic(r["panoptic"]) if vis else id_to_rgb(r["panoptic"])
        cam = params.camera
        headers = {
            "Cache-Control": "no-cache",
            "X-Simgen-Intrinsics": f"{cam.fx!r} {cam.fy!r} {cam.cx!r} {cam.cy!r} {cam.width} {cam.height}",
            "X-Simgen-C2W-CV": " ".join(repr(float(v)) for v in np.asarray(params.c2w_cv[0]).reshape(-1)),
            "X-Simgen-World-Frame": scene.world_frame,
        }
        if output == "panoptic":
            headers["X-Simgen-Segments"] = json.dumps(r["segments"], separators=(",", ":"))
        if output == "depth" and not vis:
            headers["X-Simgen-Depth-Unit"] = "millimetre"
        return Response(api.png_bytes(img), mimetype="image/png", headers=headers)

    app.add_url_rule("/render/rgb.png", "rgb_png", lambda: png_endpoint("rgb"))
    app.add_url_rule("/render/depth.png", "depth_png", lambda: png_endpoint("depth"))
    app.add_url_rule("/render/panoptic.png", "panoptic_png", lambda: png_endpoint("panoptic"))
    return app
