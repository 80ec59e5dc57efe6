"""Python client of the simgen render server (standard library only: ``http.client`` + numpy).

>>> from simgen.serve.client import RenderClient
>>> c = RenderClient("http://127.0.0.1:8000")
>>> out = c.render({"x": 1, "y": 0, "z": 1.2, "qx": 0, "qy": 0, "qz": 0, "qw": 1}, width=320, height=240)
>>> out["depth"].shape, out["panoptic"].dtype, out["segments"][:1]

Each thread keeps one persistent (keep-alive) connection, so a client object can be shared by threads.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simgen.data.camera import Intrinsics

Pose = Mapping[str, float] | np.ndarray | Sequence[Sequence[float]]


class RenderError(Exception):
    """A non-200 answer: HTTP ``status``, the request ``field`` the server names (or None), message."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(f"HTTP {status}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.field = field
        self.message = message


def _pose_json(pose: Pose) -> dict:
    if isinstance(pose, Mapping):
        return {k: float(v) for k, v in pose.items()} if "matrix" not in pose else {"matrix": pose["matrix"]}
    M = np.asarray(pose, dtype=np.float64)
    if M.shape != (4, 4):
        raise ValueError(f"pose must be {{x, y, z, qx, qy, qz, qw}} or a 4x4 matrix, got shape {M.shape}")
    return {"matrix": M.tolist()}


def decode_npz(body: bytes) -> dict[str, Any]:
    """A ``/render`` or ``/render/batch`` npz body -> arrays + ``segments`` + ``meta`` + ``intrinsics``.

    ``intrinsics`` is a :class:`simgen.data.camera.Intrinsics`; ``c2w_cv`` the OpenCV-axes
    camera-to-world the server rendered (``(4, 4)``, or ``(N, 4, 4)`` for a batch).
    """
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files if k not in ("segments", "meta")}
        out["segments"] = json.loads(str(z["segments"]))
        out["meta"] = json.loads(str(z["meta"]))
    k = out["meta"]["intrinsics"]
    out["intrinsics"] = Intrinsics(k["fx"], k["fy"], k["cx"], k["cy"], k["width"], k["height"])
    return out


def decode_rig_npz(body: bytes) -> dict[str, dict[str, Any]]:
    """A ``/render/rig`` npz body -> ``{camera name: {rgb, depth | depth_mm, panoptic, K, c2w_cv, segments,
    intrinsics}}`` (the arrays asked for; same meaning as :func:`decode_npz`), in request order."""
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("segments", "meta")}
        segments = json.loads(str(z["segments"]))
        meta = json.loads(str(z["meta"]))
    out: dict[str, dict[str, Any]] = {}
    for cam in meta["cameras"]:
        name, k = cam["name"], cam["intrinsics"]
        r: dict[str, Any] = {
            key.split("/", 1)[1]: v for key, v in arrays.items() if key.split("/", 1)[0] == name
        }
        r["segments"] = segments.get(name, [])
        r["intrinsics"] = Intrinsics(k["fx"], k["fy"], k["cx"], k["cy"], k["width"], k["height"])
        r["meta"] = {**{m: v for m, v in meta.items() if m != "cameras"}, **cam}
        out[name] = r
    return out


class RenderClient:
    """Client of ``simgen serve``.

    Args:
        base_url: e.g. ``"http://127.0.0.1:8000"``.
        timeout: seconds per request.
        retries: times a 503 (server busy) is retried, honouring ``Retry-After``.
    """

    def __init__(self, base_url: str, timeout: float = 60.0, retries: int = 3):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"base_url must look like http://host:port, got {base_url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._local = threading.local()

    # -- transport ---------------------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def request(
        self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange -> (status, headers, body); retries 503 and a dropped keep-alive connection."""
        url = self.prefix + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        attempt = 0
        while True:
            try:
                c = self._conn()
                c.request(method, url, body=data, headers=headers)
                r = c.getresponse()
                payload = r.read()
                status, hdrs = r.status, {k.lower(): v for k, v in r.getheaders()}
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: reconnect once per attempt.
                self.close()
                attempt += 1
                if attempt > self.retries + 1:
                    raise
                continue
            if hdrs.get("connection", "").lower() == "close":
                self.close()
            if status == 503 and attempt < self.retries:
                attempt += 1
                time.sleep(float(hdrs.get("retry-after", "1") or 1))
                continue
            return status, hdrs, payload

    def _check(self, status: int, payload: bytes) -> None:
        if status == 200:
            return
        try:
            err = json.loads(payload)
            raise RenderError(status, err.get("field"), err.get("error", ""))
        except (ValueError, AttributeError):
            raise RenderError(status, None, payload[:200].decode(errors="replace")) from None

    def _get_json(self, path: str) -> dict:
        status, _, payload = self.request("GET", path)
        self._check(status, payload)
        return json.loads(payload)

    # -- API ---------------------------------------------------------------------------------------

    def health(self) -> dict:
        """``GET /healthz``."""
        return self._get_json("/healthz")

    def scene(self) -> dict:
        """``GET /scene``: categories, instances, world bounds, default camera, limits."""
        return self._get_json("/scene")

    def openapi(self) -> dict:
        return self._get_json("/openapi.json")

    @staticmethod
    def _camera(width: int, height: int, convention: str, camera: Mapping[str, float]) -> dict:
        return {"width": int(width), "height": int(height), "convention": convention, **camera}

    def render(
        self,
        pose: Pose,
        *,
        width: int = 320,
        height: int = 240,
        convention: str = "gazebo",
        outputs: Sequence[str] = ("rgb", "depth", "panoptic"),
        depth_format: str = "float32",
        **camera: float,
    ) -> dict[str, Any]:
        """Render one camera (``POST /render``, npz).

        Args:
            pose: ``{x, y, z, qx, qy, qz, qw}`` (scalar-last unit quaternion) or a ``(4, 4)`` matrix, the
                camera frame in the server's world frame with ``convention``'s camera axes.
            camera: ``fx=, fy=, cx=, cy=`` (pixels) or ``hfov_deg=`` / ``hfov_rad=``.

        Returns:
            ``rgb (H, W, 3) uint8``, ``depth (H, W) float32`` metres (or ``depth_mm uint16``), ``panoptic
            (H, W) int32``, ``segments`` [{id, category_id, category_name, isthing, instance}], ``K``,
            ``c2w_cv``, ``intrinsics``, ``meta`` -- the outputs asked for.
        """
        body = {
            "pose": _pose_json(pose),
            **self._camera(width, height, convention, camera),
            "outputs": list(outputs),
            "encoding": "npz",
            "depth_format": depth_format,
        }
        status, _, payload = self.request("POST", "/render", body)
        self._check(status, payload)
        return decode_npz(payload)

    def render_batch(
        self,
        poses: Sequence[Pose],
        *,
        width: int = 320,
        height: int = 240,
        convention: str = "gazebo",
        outputs: Sequence[str] = ("rgb", "depth", "panoptic"),
        depth_format: str = "float32",
        **camera: float,
    ) -> dict[str, Any]:
        """Render many poses with one camera model (``POST /render/batch``): arrays gain a leading ``N``."""
        body = {
            "poses": [_pose_json(p) for p in poses],
            **self._camera(width, height, convention, camera),
            "outputs": list(outputs),
            "encoding": "npz",
            "depth_format": depth_format,
        }
        status, _, payload = self.request("POST", "/render/batch", body)
        self._check(status, payload)
        return decode_npz(payload)

    def post_render(self, body: Mapping[str, Any], batch: bool = False) -> dict[str, Any]:
        """``POST /render`` (or ``/render/batch``) with a ready JSON body (npz encoding) -> decoded arrays."""
        if body.get("encoding", "npz") != "npz":
            raise ValueError("post_render decodes npz answers only; leave 'encoding' out or set it to 'npz'")
        status, _, payload = self.request("POST", "/render/batch" if batch else "/render", dict(body))
        self._check(status, payload)
        return decode_npz(payload)

    def render_rig(
        self,
        pose: Pose,
        cameras: Sequence[Mapping[str, Any]],
        *,
        convention: str = "gazebo",
        depth_format: str = "float32",
    ) -> dict[str, dict[str, Any]]:
        """Render several cameras of one rig pose in one request (``POST /render/rig``).

        Args:
            pose: the rig (robot) frame in the world, as for :meth:`render`.
            cameras: per camera ``{name, offset (a pose of the camera in the rig frame), width, height,
                fx/fy/cx/cy or hfov_deg/hfov_rad, outputs}`` -- every key optional.

        Returns:
            ``{name: result}`` with each result like :meth:`render`'s.
        """
        cams = []
        for c in cameras:
            c = dict(c)
            if "offset" in c:
                c["offset"] = _pose_json(c["offset"])
            if "outputs" in c:
                c["outputs"] = list(c["outputs"])
            cams.append(c)
        body = {
            "pose": _pose_json(pose),
            "convention": convention,
            "cameras": cams,
            "encoding": "npz",
            "depth_format": depth_format,
        }
        return self.post_rig(body)

    def post_rig(self, body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``POST /render/rig`` with a ready JSON body -> ``{camera name: decoded arrays}``."""
        status, _, payload = self.request("POST", "/render/rig", dict(body))
        self._check(status, payload)
        return decode_rig_npz(payload)

    def png(self, output: str, pose: Mapping[str, float], **params: Any) -> tuple[bytes, dict[str, str]]:
        """``GET /render/<output>.png`` -> (PNG bytes, response headers)."""
        status, hdrs, payload = self.request("GET", f"/render/{output}.png", query={**pose, **params})
        self._check(status, payload)
        return payload, hdrs

    def __enter__(self) -> RenderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
