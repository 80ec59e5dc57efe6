"""The simulator-independent half of the Gazebo sensor plugin (``sensor_plugin/``).

Gazebo calls the plugin every physics step with the camera link's world pose; everything that decides
*what happens then* lives here, so it is tested without Gazebo:

* :class:`BridgeConfig` -- the plugin's settings, parsed from the SDF ``<plugin>`` element's strings;
* :func:`camera_pose` -- link world pose (+ fixed camera offset) -> render request pose (gazebo axes);
* :class:`RateLimiter` -- fires at ``rate_hz`` of *simulation* time, never in bursts after a pause;
* :func:`render_request` -- the ``POST /render`` body;
* :func:`build_messages` -- the server's answer -> the fields of ``gz.msgs.Image`` (RGB ``RGB_INT8``,
  depth ``R_FLOAT32``, panoptic ``RGB_INT8`` in the COCO id encoding), ``gz.msgs.CameraInfo`` and a
  ``gz.msgs.StringMsg`` with the segments in view, as plain dicts;
* :class:`CameraBridge` -- ties them together around two callables, ``render(body) -> result`` and
  ``publish(topic, kind, fields)``, so tests pass fakes and the plugin passes an HTTP client and
  gz-transport publishers.

Message field dicts mirror gz-msgs 10 (Harmonic): ``header = {"stamp": (sec, nsec), "frame_id": str}``
(the plugin stores ``frame_id`` as the header's ``data`` entry with key ``frame_id``, as Gazebo's own
sensors do); image ``data`` is row-major bytes, little-endian for floats.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from simgen.data.camera import ros_camera_matrix
from simgen.data.io import id_to_rgb
from simgen.serve.scene import OUTPUTS

log = logging.getLogger("simgen.gazebo")

# gz.msgs.PixelFormatType values (gz-msgs pixel_format_type.proto).
PIXEL_FORMAT = {"L_INT16": 2, "RGB_INT8": 3, "R_FLOAT32": 13}
MESSAGE_KINDS = ("image", "camera_info", "string")


class BridgeConfigError(ValueError):
    """A bad plugin setting; ``key`` is the SDF element name."""

    def __init__(self, key: str, message: str):
        super().__init__(f"<{key}>: {message}")
        self.key = key


@dataclass
class BridgeConfig:
    """Settings of the Gazebo camera plugin; each field is an SDF element of the ``<plugin>`` block."""

    server: str = field(default="http://127.0.0.1:8000", metadata={"help": "render server base URL"})
    camera_link: str = field(
        default="camera_link", metadata={"help": "link of the robot model whose world pose is the camera's"}
    )
    camera_offset: tuple[float, ...] = field(
        default=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        metadata={
            "help": "camera frame in the link frame: 'x y z roll pitch yaw' (m, rad; SDF <pose> style)"
        },
    )
    rate_hz: float = field(default=10.0, metadata={"help": "renders per second of simulation time"})
    width: int = field(default=320, metadata={"help": "image width (pixels)"})
    height: int = field(default=240, metadata={"help": "image height (pixels)"})
    hfov_rad: float = field(
        default=1.047, metadata={"help": "horizontal field of view (rad), as SDF <horizontal_fov>"}
    )
    outputs: tuple[str, ...] = field(default=OUTPUTS, metadata={"help": "any of rgb depth panoptic"})
    topic: str = field(
        default="/simgen/camera",
        metadata={
            "help": "topic prefix: <topic>/image, /depth_image, /panoptic_image, /segments, /camera_info"
        },
    )
    frame_id: str = field(default="", metadata={"help": "header frame_id (default: <model>::<camera_link>)"})
    depth_no_hit: float = field(
        default=math.inf,
        metadata={"help": "depth value where nothing is hit (Gazebo depth cameras and REP 117 use +inf)"},
    )
    timeout_s: float = field(default=2.0, metadata={"help": "seconds to wait for one render"})
    asynchronous: bool = field(
        default=True,
        metadata={
            "help": "render on a background thread so physics never waits (a pose that arrives while a render "
            "is running replaces any older waiting one); false: render inside the update, deterministic"
        },
    )

    def topics(self) -> dict[str, str]:
        """``{output: topic}`` for rgb, depth, panoptic, segments and camera_info."""
        base = self.topic.rstrip("/")
        return {
            "rgb": f"{base}/image",
            "depth": f"{base}/depth_image",
            "panoptic": f"{base}/panoptic_image",
            "segments": f"{base}/segments",
            "camera_info": f"{base}/camera_info",
        }

    def topic_kinds(self) -> dict[str, str]:
        """``{topic: message kind}`` of every topic the plugin publishes (kinds: :data:`MESSAGE_KINDS`)."""
        kinds = {"segments": "string", "camera_info": "camera_info"}
        return {t: kinds.get(name, "image") for name, t in self.topics().items()}


SDF_KEYS = tuple(f.name for f in fields(BridgeConfig))


def _floats(text: str, key: str, n: int | None = None) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.split())
    except ValueError:
        raise BridgeConfigError(key, f"expected numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise BridgeConfigError(key, f"expected {n} numbers, got {len(vals)} in {text!r}")
    if not all(math.isfinite(v) for v in vals):
        raise BridgeConfigError(key, f"numbers must be finite, got {text!r}")
    return vals


def config_from_sdf(values: Mapping[str, str]) -> BridgeConfig:
    """Plugin SDF element texts ``{key: text}`` -> :class:`BridgeConfig` (BridgeConfigError naming the key)."""
    cfg = BridgeConfig()
    for key, raw in values.items():
        if key not in SDF_KEYS:
            continue  # <module_name> and other loader elements share the block
        text = str(raw).strip()
        if key in ("server", "camera_link", "topic", "frame_id"):
            if not text and key != "frame_id":
                raise BridgeConfigError(key, "must not be empty")
            value: Any = text
        elif key == "camera_offset":
            value = _floats(text, key, 6)
        elif key in ("width", "height"):
            try:
                value = int(text)
            except ValueError:
                raise BridgeConfigError(key, f"expected an integer, got {text!r}") from None
            if not 1 <= value <= 8192:
                raise BridgeConfigError(key, f"must lie in [1, 8192], got {value}")
        elif key == "outputs":
            value = tuple(text.replace(",", " ").split())
            bad = [o for o in value if o not in OUTPUTS]
            if bad or not value:
                raise BridgeConfigError(key, f"expected some of {list(OUTPUTS)}, got {text!r}")
            value = tuple(o for o in OUTPUTS if o in value)
        elif key == "asynchronous":
            if text.lower() not in ("true", "false", "1", "0"):
                raise BridgeConfigError(key, f"expected true or false, got {text!r}")
            value = text.lower() in ("true", "1")
        elif key == "depth_no_hit":
            try:
                value = float(text)
            except ValueError:
                raise BridgeConfigError(key, f"expected a number or inf, got {text!r}") from None
        else:  # rate_hz, hfov_rad, timeout_s
            (value,) = _floats(text, key, 1)
            if value <= 0 or (key == "hfov_rad" and value >= math.pi):
                raise BridgeConfigError(key, f"out of range: {value}")
        setattr(cfg, key, value)
    if not cfg.server.startswith("http://"):
        raise BridgeConfigError("server", f"must look like http://host:port, got {cfg.server!r}")
    return cfg


def offset_matrix(offset: tuple[float, ...]) -> np.ndarray:
    """SDF pose ``x y z roll pitch yaw`` (fixed-axis XYZ, as Gazebo) -> ``(4, 4)`` transform."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", offset[3:]).as_matrix()
    T[:3, 3] = offset[:3]
    return T


def camera_pose(
    link_position: tuple[float, float, float],
    link_quat_xyzw: tuple[float, float, float, float],
    offset: tuple[float, ...] = (0, 0, 0, 0, 0, 0),
) -> dict[str, float]:
    """The camera's world pose as a request pose ``{x, y, z, qx, qy, qz, qw}``, gazebo convention.

    Args:
        link_position: ``(3,)`` link origin in the world (m).
        link_quat_xyzw: link orientation, scalar-last (``gz.math.Quaterniond``'s x, y, z, w).
        offset: the camera frame in the link frame, ``x y z roll pitch yaw``.
    """
    q = np.asarray(link_quat_xyzw, dtype=np.float64)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
    T[:3, 3] = link_position
    if any(offset):
        T = T @ offset_matrix(offset)
    quat = Rotation.from_matrix(T[:3, :3]).as_quat()
    if quat[3] < 0:
        quat = -quat
    return dict(
        zip(("x", "y", "z", "qx", "qy", "qz", "qw"), [*T[:3, 3].tolist(), *quat.tolist()], strict=True)
    )


class RateLimiter:
    """Fires at most ``rate_hz`` times per second of simulation time.

    Ticks stay on a fixed grid (``t0 + k / rate``) while the simulation keeps up, so a 10 Hz camera on a
    1 kHz physics loop fires every 100th step; after a pause or a slow step it fires once and restarts
    the grid instead of catching up in a burst. Time going backwards (a world reset) restarts it too.
    """

    def __init__(self, rate_hz: float):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self._next: float | None = None
        self._last: float | None = None

    def reset(self) -> None:
        self._next = self._last = None

    def due(self, t: float) -> bool:
        if self._last is not None and t < self._last:
            self.reset()
        self._last = t
        eps = 1e-9 * max(1.0, abs(t))  # sim times are sums of float steps
        if self._next is not None and t + eps < self._next:
            return False
        nxt = (self._next if self._next is not None else t) + self.period
        self._next = nxt if nxt > t + eps else t + self.period
        return True


def render_request(cfg: BridgeConfig, pose: Mapping[str, float]) -> dict:
    """``POST /render`` body for one camera pose (npz; float32 depth)."""
    return {
        "pose": dict(pose),
        "convention": "gazebo",
        "width": cfg.width,
        "height": cfg.height,
        "hfov_rad": cfg.hfov_rad,
        "outputs": list(cfg.outputs),
        "encoding": "npz",
        "depth_format": "float32",
    }


RIG_SHARED = ("server", "camera_link", "rate_hz", "timeout_s", "asynchronous")  # one link, one request a tick


def rig_configs(shared: Mapping[str, str], cameras: Sequence[Mapping[str, str]]) -> list[BridgeConfig]:
    """Settings of a camera rig: the plugin block's elements ``shared`` plus one ``<camera>`` block each.

    A camera block's elements override the shared ones for that camera (``camera_offset``, ``width``,
    ``topic``...); :data:`RIG_SHARED` settings must not differ per camera, since the rig is one link rendered
    by one request per tick. Topics must differ. Raises BridgeConfigError naming the element.
    """
    if not cameras:
        return [config_from_sdf(shared)]
    cfgs = []
    for i, cam in enumerate(cameras):
        clash = [k for k in RIG_SHARED if k in cam]
        if clash:
            raise BridgeConfigError(clash[0], f"camera {i}: set once for the whole rig, not per <camera>")
        cfgs.append(config_from_sdf({**shared, **cam}))
    topics = [c.topic.rstrip("/") for c in cfgs]
    for i, t in enumerate(topics):
        if t in topics[:i]:
            raise BridgeConfigError("topic", f"camera {i}: topic {t!r} is already used by another camera")
    return cfgs


def rig_camera_name(cfg: BridgeConfig, index: int) -> str:
    """The ``/render/rig`` camera name of a rig camera: its topic with ``/`` as ``_`` (unique per rig)."""
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in cfg.topic.strip("/"))[:64]
    return name or f"cam{index}"


def rig_request(cfgs: Sequence[BridgeConfig], link_pose: Mapping[str, float]) -> dict:
    """``POST /render/rig`` body: the link's world pose (gazebo axes) and each camera's offset in the link
    frame, image size, field of view and outputs (npz; float32 depth)."""
    cams = []
    for i, cfg in enumerate(cfgs):
        cams.append(
            {
                "name": rig_camera_name(cfg, i),
                "offset": camera_pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), cfg.camera_offset),
                "width": cfg.width,
                "height": cfg.height,
                "hfov_rad": cfg.hfov_rad,
                "outputs": list(cfg.outputs),
            }
        )
    return {
        "pose": dict(link_pose),
        "convention": "gazebo",
        "cameras": cams,
        "encoding": "npz",
        "depth_format": "float32",
    }


def stamp(t: float) -> tuple[int, int]:
    """Seconds -> ``(sec, nsec)`` of ``gz.msgs.Time``."""
    sec = math.floor(t)
    nsec = min(round((t - sec) * 1e9), 999_999_999)
    return int(sec), int(nsec)


def camera_info_fields(K: np.ndarray, width: int, height: int, header: dict) -> dict:
    """``gz.msgs.CameraInfo`` fields of a pinhole camera without distortion (``K (3, 3)``, simgen's pixel
    convention). The message carries the ROS convention (the first pixel's centre at 0, half a pixel off
    simgen's), since ros_gz_bridge hands it to ROS ``sensor_msgs/CameraInfo`` unchanged."""
    K = ros_camera_matrix(K)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return {
        "header": header,
        "width": int(width),
        "height": int(height),
        "distortion": {"k": [0.0] * 5},  # plumb bob (the message's default model), all zero
        "intrinsics": {"k": K.reshape(-1).tolist()},
        "projection": {"p": P.reshape(-1).tolist()},
        "rectification_matrix": np.eye(3).reshape(-1).tolist(),
    }


def image_fields(array: np.ndarray, pixel_format: str, header: dict) -> dict:
    """``gz.msgs.Image`` fields of an ``(H, W, 3) uint8`` or ``(H, W) float32`` array."""
    a = np.ascontiguousarray(array)
    if pixel_format == "RGB_INT8":
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"RGB_INT8 needs (H, W, 3) uint8, got {a.shape} {a.dtype}")
    elif pixel_format == "R_FLOAT32":
        if a.ndim != 2:
            raise ValueError(f"R_FLOAT32 needs (H, W), got {a.shape}")
        a = a.astype("<f4", copy=False)
    else:
        raise ValueError(f"unsupported pixel format {pixel_format}")
    H, W = a.shape[:2]
    return {
        "header": header,
        "width": int(W),
        "height": int(H),
        "pixel_format_type": PIXEL_FORMAT[pixel_format],
        "step": int(a.strides[0]),
        "data": a.tobytes(),
    }


def build_messages(
    cfg: BridgeConfig, result: Mapping[str, Any], t: float, frame_id: str
) -> list[tuple[str, str, dict]]:
    """A decoded ``/render`` answer -> ``[(topic, kind, fields)]`` with kind in :data:`MESSAGE_KINDS`.

    Args:
        result: :func:`simgen.serve.client.decode_npz` output (``rgb``, ``depth``, ``panoptic``, ``segments``,
            ``K``).
        t: simulation time of the pose (s), the header stamp.
    """
    topics = cfg.topics()
    header = {"stamp": stamp(t), "frame_id": frame_id}
    out: list[tuple[str, str, dict]] = []
    if "rgb" in result:
        out.append((topics["rgb"], "image", image_fields(result["rgb"], "RGB_INT8", header)))
    if "depth" in result:
        d = np.asarray(result["depth"], dtype=np.float32)
        if cfg.depth_no_hit != 0.0:
            d = np.where(d > 0, d, np.float32(cfg.depth_no_hit))
        out.append((topics["depth"], "image", image_fields(d, "R_FLOAT32", header)))
    if "panoptic" in result:
        out.append(
            (topics["panoptic"], "image", image_fields(id_to_rgb(result["panoptic"]), "RGB_INT8", header))
        )
        segs = {"header": header, "data": json.dumps({"segments": result.get("segments", [])})}
        out.append((topics["segments"], "string", segs))
    out.append(
        (topics["camera_info"], "camera_info", camera_info_fields(result["K"], cfg.width, cfg.height, header))
    )
    return out


@dataclass
class BridgeStats:
    requested: int = 0
    published: int = 0
    dropped: int = 0  # poses replaced by a newer one before a render slot freed up
    errors: int = 0
    last_error: str = ""


class CameraBridge:
    """Rate-limited renders of a moving camera (or a rig of cameras on one link), published as messages.

    Args:
        cfg: settings; a list of several (:func:`rig_configs`) makes a rig: every due tick sends one
            ``POST /render/rig`` for all of them, so their images share the pose and the stamp.
        render: ``render(body) -> result`` (e.g. :meth:`simgen.serve.client.RenderClient.post_render`; for a
            rig :meth:`~simgen.serve.client.RenderClient.post_rig`, returning ``{camera name: result}``);
            raises on failure.
        publish: ``publish(topic, kind, fields)``; called from the render thread when asynchronous.
        frame_id: header frame id (``cfg.frame_id`` wins when set).
    """

    def __init__(
        self,
        cfg: BridgeConfig | Sequence[BridgeConfig],
        render: Callable[[dict], Mapping[str, Any]],
        publish: Callable[[str, str, dict], None],
        frame_id: str = "camera",
    ):
        cams = [cfg] if isinstance(cfg, BridgeConfig) else list(cfg)
        if not cams:
            raise ValueError("CameraBridge needs at least one camera")
        for k in RIG_SHARED:
            if any(getattr(c, k) != getattr(cams[0], k) for c in cams):
                raise BridgeConfigError(k, "must be the same for every camera of a rig")
        self.cameras = cams
        self.rig = len(cams) > 1
        names = [rig_camera_name(c, i) for i, c in enumerate(cams)]
        if len(set(names)) < len(names):
            raise BridgeConfigError("topic", f"rig cameras need topics that differ in more than '/': {names}")
        self.frame_ids = [c.frame_id or frame_id for c in cams]
        cfg = cams[0]
        self.cfg = cfg
        self.render = render
        self.publish = publish
        self.frame_id = cfg.frame_id or frame_id
        self.limiter = RateLimiter(cfg.rate_hz)
        self.stats = BridgeStats()
        self._cond = threading.Condition()
        self._pending: tuple[float, dict] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_log = -math.inf

    def step(
        self,
        t: float,
        link_position: tuple[float, float, float],
        link_quat_xyzw: tuple[float, float, float, float],
    ) -> bool:
        """Called every simulation step with the camera link's world pose; True when a render was started."""
        if not self.limiter.due(t):
            return False
        if self.rig:
            body = rig_request(self.cameras, camera_pose(link_position, link_quat_xyzw))
        else:
            body = render_request(
                self.cfg, camera_pose(link_position, link_quat_xyzw, self.cfg.camera_offset)
            )
        self.stats.requested += 1
        if not self.cfg.asynchronous:
            self._render_and_publish(t, body)
            return True
        with self._cond:
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = (t, body)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="simgen-camera", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def reset(self) -> None:
        """World reset: forget the rate grid and any waiting pose."""
        self.limiter.reset()
        with self._cond:
            self._pending = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no render is waiting or running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.timeout_s + 1)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                t, body = self._pending
                self._pending = None
                self._busy = True
            try:
                self._render_and_publish(t, body)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _render_and_publish(self, t: float, body: dict) -> None:
        try:
            result = self.render(body)
        except Exception as e:  # the server being down must never stop the simulation
            self.stats.errors += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"
            now = time.monotonic()
            if now - self._last_log > 5.0:  # one line per 5 s, not one per frame
                log.warning(
                    "render failed (%s); %d failures so far", self.stats.last_error, self.stats.errors
                )
                self._last_log = now
            return
        if not self.rig:
            parts = [(self.cfg, result, self.frame_id)]
        else:
            names = [rig_camera_name(c, i) for i, c in enumerate(self.cameras)]
            parts = [(c, result[n], f) for c, n, f in zip(self.cameras, names, self.frame_ids, strict=True)]
        for cfg, res, frame_id in parts:
            for topic, kind, msg in build_messages(cfg, res, t, frame_id):
                self.publish(topic, kind, msg)
        self.stats.published += 1
