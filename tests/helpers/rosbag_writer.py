"""Writing ROS 2 bags of an RGB-D camera with exact ground truth, for tests and bench/ (not shipped).

:func:`write_synthetic_bag` renders a synthetic scene (``simgen.synth``, exact geometry) and records
it as a robot would: colour + depth images with CameraInfo, and TF
``map -> odom -> base_link -> camera_link -> camera_{color,depth}_optical_frame``. It returns the
exact answer an importer must recover (poses, intrinsics, depth on the colour camera).

The TF samples of ``odom -> base_link`` are *not* at the image stamps: each frame gets two samples,
``delta_before`` before and ``delta_after`` after its stamp, placed on one screw motion such that
linear interpolation of the translation and slerp of the rotation give the exact pose at the image
stamp. An importer that does not interpolate (or interpolates with the wrong weight) misses by
centimetres and degrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from simgen.data.camera import Intrinsics, opencv_to_opengl, opengl_to_opencv

T0_NS = 1_700_000_000_000_000_000  # a realistic epoch stamp: float64 seconds would lose nanoseconds
PERIOD_NS = 33_333_333  # 30 Hz

# camera_link (x forward, y left, z up) -> optical frame (x right, y down, z forward), REP 103.
R_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rigid(R: np.ndarray | None = None, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = R
    T[:3, 3] = t
    return T


def stamp_msg(ts, ns: int):
    return ts.types["builtin_interfaces/msg/Time"](
        sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000)
    )


def header(ts, ns: int, frame: str):
    return ts.types["std_msgs/msg/Header"](stamp=stamp_msg(ts, ns), frame_id=frame)


class BagWriter:
    """Thin helper over ``rosbags.rosbag2.Writer`` for the message types the importer reads."""

    def __init__(self, path: Path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.ts = get_typestore(Stores.ROS2_HUMBLE)
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.conns: dict[str, object] = {}

    def __enter__(self) -> BagWriter:
        self.writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def write(self, topic: str, msgtype: str, msg, log_ns: int) -> None:
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(self.conns[topic], int(log_ns), self.ts.serialize_cdr(msg, msgtype))

    def image(
        self, topic: str, ns: int, frame: str, array: np.ndarray, encoding: str, big_endian: bool = False
    ):
        a = np.asarray(array)
        if big_endian:
            a = a.astype(a.dtype.newbyteorder(">"))
        h, w = a.shape[:2]
        data = np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=np.uint8)
        msg = self.ts.types["sensor_msgs/msg/Image"](
            header=header(self.ts, ns, frame), height=h, width=w, encoding=encoding,
            is_bigendian=int(big_endian), step=data.size // h, data=data,
        )  # fmt: skip
        self.write(topic, "sensor_msgs/msg/Image", msg, ns)

    def compressed(self, topic: str, ns: int, frame: str, payload: bytes, fmt: str):
        msg = self.ts.types["sensor_msgs/msg/CompressedImage"](
            header=header(self.ts, ns, frame), format=fmt, data=np.frombuffer(payload, dtype=np.uint8)
        )
        self.write(topic, "sensor_msgs/msg/CompressedImage", msg, ns)

    def camera_info(self, topic: str, ns: int, frame: str, K: Intrinsics, D=(), model: str = "plumb_bob"):
        """``K`` in simgen's convention (principal point from the image corner): ROS's is 0.5 px less."""
        cx, cy = K.cx - 0.5, K.cy - 0.5
        k = np.array([K.fx, 0, cx, 0, K.fy, cy, 0, 0, 1], dtype=np.float64)
        p = np.array([K.fx, 0, cx, 0, 0, K.fy, cy, 0, 0, 0, 1, 0], dtype=np.float64)
        ts = self.ts
        msg = ts.types["sensor_msgs/msg/CameraInfo"](
            header=header(ts, ns, frame), height=K.height, width=K.width, distortion_model=model,
            d=np.asarray(D, dtype=np.float64), k=k, r=np.eye(3).ravel(), p=p, binning_x=0, binning_y=0,
            roi=ts.types["sensor_msgs/msg/RegionOfInterest"](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )  # fmt: skip
        self.write(topic, "sensor_msgs/msg/CameraInfo", msg, ns)

    def tf(self, ns: int, edges: list[tuple[str, str, np.ndarray]], static: bool = False):
        ts = self.ts
        items = []
        for parent, child, T in edges:
            q = Rotation.from_matrix(T[:3, :3]).as_quat()
            items.append(
                ts.types["geometry_msgs/msg/TransformStamped"](
                    header=header(ts, ns, parent),
                    child_frame_id=child,
                    transform=ts.types["geometry_msgs/msg/Transform"](
                        translation=ts.types["geometry_msgs/msg/Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                        rotation=ts.types["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
                    ),
                )
            )
        msg = ts.types["tf2_msgs/msg/TFMessage"](transforms=items)
        self.write("/tf_static" if static else "/tf", "tf2_msgs/msg/TFMessage", msg, ns)


# ----------------------------------------------------------------------------- distortion (test side)


def distort_points(x: np.ndarray, y: np.ndarray, D) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's plumb_bob (k1, k2, p1, p2, k3), written from OpenCV's documentation."""
    k1, k2, p1, p2, k3 = D
    r2 = x**2 + y**2
    f = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    return x * f + 2 * p1 * x * y + p2 * (r2 + 2 * x**2), y * f + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y


def undistort_points(xd: np.ndarray, yd: np.ndarray, D, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`distort_points` by fixed-point iteration (converges for moderate distortion)."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        dx, dy = distort_points(x, y, D)
        x, y = x - (dx - xd), y - (dy - yd)
    return x, y


def distort_image(image: np.ndarray, K: Intrinsics, D, nearest: bool) -> np.ndarray:
    """The image a camera with distortion ``D`` (plumb_bob) and matrix ``K`` records of a scene
    whose pinhole image is ``image``: each distorted pixel samples the pinhole image where its ray
    lands (bilinear, or nearest for depth); rays leaving the pinhole image get 0."""
    from scipy.ndimage import map_coordinates

    u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
    x, y = undistort_points((u - K.cx) / K.fx, (v - K.cy) / K.fy, D)
    coords = np.stack([y * K.fy + K.cy - 0.5, x * K.fx + K.cx - 0.5])
    order = 0 if nearest else 1
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        return map_coordinates(img, coords, order=order, mode="constant", cval=0.0)
    return np.stack(
        [map_coordinates(img[..., c], coords, order=order, mode="constant") for c in range(3)], -1
    )


# ----------------------------------------------------------------------------- the synthetic robot


@dataclass
class SyntheticBag:
    """What an importer must recover from :func:`write_synthetic_bag`'s bag."""

    path: Path
    K: Intrinsics  # colour camera (simgen convention)
    K_depth: Intrinsics
    stamps: list[int]  # colour header stamps, ns
    c2w_cv: np.ndarray  # (N, 4, 4) colour optical frame in map, OpenCV axes
    rgb: list[np.ndarray]  # (H, W, 3) uint8 pinhole colour images (before any distortion)
    depth: list[np.ndarray]  # (H, W) float32 metres: exact z-depth of the colour camera, 0 = no hit
    T_color_depth: np.ndarray  # (4, 4) depth optical frame in the colour optical frame
    extra: dict = field(default_factory=dict)


def write_synthetic_bag(
    path: Path,
    storage: str = "mcap",
    color_format: str = "rgb8",  # rgb8, bgr8, jpeg, png
    depth_format: str = "16UC1",  # 16UC1, 32FC1, compressedDepth
    registered: bool = True,
    frames: int = 8,
    width: int = 96,
    height: int = 72,
    seed: int = 0,
    distortion: tuple[float, ...] | None = None,
    distortion_model: str = "plumb_bob",
    depth_delay_ns: int = 0,
    delta_before_ns: int = 4_000_000,
    delta_after_ns: int = 9_000_000,
    color_topic: str = "/camera/color/image_raw",
    depth_topic: str | None = None,
) -> SyntheticBag:
    """Render ``frames`` views of the ``tiny`` synthetic scene and write them as a rosbag2 at ``path``.

    ``registered``: depth on ``/camera/aligned_depth_to_color/image_raw`` in the colour optical frame
    with the colour CameraInfo (as realsense2_camera's ``align_depth``); otherwise depth on
    ``/camera/depth/image_rect_raw`` from ``camera_depth_optical_frame``, 3 cm to the side of the
    colour camera and turned 1.5 degrees, with its own (wider) intrinsics, stamped
    ``depth_delay_ns`` after the colour image.
    ``distortion``: plumb_bob coefficients of the colour camera (registered depth shares them).
    """
    from PIL import Image

    from simgen.render.raycast import MeshRaycaster
    from simgen.synth import make_scene, preset_config, render_frame

    cfg = preset_config("tiny", seed, noise=False, frames=frames, width=width, height=height)
    geom, poses_gl = make_scene(cfg)
    K = cfg.intrinsics()
    caster = MeshRaycaster(geom.mesh)
    rng = np.random.default_rng(seed + 17)

    T_map_odom = rigid(Rotation.from_euler("z", 20, degrees=True).as_matrix(), (0.4, -0.3, 0.0))
    T_base_link = rigid(None, (0.12, 0.0, 0.25))  # camera_link on the robot
    T_link_color = rigid(R_LINK_OPTICAL, (0.0, 0.015, 0.0))
    T_link_depth = rigid(
        R_LINK_OPTICAL @ Rotation.from_euler("y", 1.5, degrees=True).as_matrix(), (0.0, -0.015, 0.0)
    )
    T_color_depth = np.linalg.inv(T_link_color) @ T_link_depth if not registered else np.eye(4)
    K_depth = (
        K if registered else Intrinsics(K.fx * 0.9, K.fy * 0.9, K.cx + 1.25, K.cy - 0.75, K.width, K.height)
    )
    T_base_color = T_base_link @ T_link_color

    c2w = np.stack([opengl_to_opencv(p) for p in poses_gl])
    stamps = [T0_NS + (k + 1) * PERIOD_NS for k in range(frames)]
    # odom -> base_link samples around each stamp, on a screw motion through the exact pose.
    tf_samples: list[tuple[int, np.ndarray]] = []
    for k in range(frames):
        T_odom_base = np.linalg.inv(T_map_odom) @ c2w[k] @ np.linalg.inv(T_base_color)
        w = delta_before_ns / (delta_before_ns + delta_after_ns)
        omega = rng.normal(size=3) * 0.05
        d = rng.normal(size=3) * 0.02
        for s, ns in ((-w, stamps[k] - delta_before_ns), (1 - w, stamps[k] + delta_after_ns)):
            T = T_odom_base.copy()
            T[:3, :3] = T_odom_base[:3, :3] @ Rotation.from_rotvec(s * omega).as_matrix()
            T[:3, 3] = T_odom_base[:3, 3] + s * d
            tf_samples.append((ns, T))

    def odom_base_at(ns: int) -> np.ndarray:
        """Independent interpolation (scipy's Slerp) of the published odom -> base_link samples."""
        ts = np.array([s for s, _ in tf_samples], dtype=np.int64)
        rel = (ts - ts[0]).astype(np.float64)
        slerp = Slerp(rel, Rotation.from_matrix(np.stack([T[:3, :3] for _, T in tf_samples])))
        t = float(ns - ts[0])
        T = np.eye(4)
        T[:3, :3] = slerp([t]).as_matrix()[0]
        T[:3, 3] = [np.interp(t, rel, [T_[i, 3] for _, T_ in tf_samples]) for i in range(3)]
        return T

    rgbs, depths = [], []
    depth_frame = "camera_color_optical_frame" if registered else "camera_depth_optical_frame"
    info_depth = "/camera/aligned_depth_to_color/camera_info" if registered else "/camera/depth/camera_info"
    depth_topic = depth_topic or (
        "/camera/aligned_depth_to_color/image_raw" if registered else "/camera/depth/image_rect_raw"
    )
    with BagWriter(path, storage) as bag:
        bag.tf(T0_NS, [("base_link", "camera_link", T_base_link),
                       ("camera_link", "camera_color_optical_frame", T_link_color),
                       ("camera_link", "camera_depth_optical_frame", T_link_depth)], static=True)  # fmt: skip
        t_end = stamps[-1] + PERIOD_NS
        for ns in range(T0_NS, t_end + 1, 500_000_000):  # map -> odom at 2 Hz, constant
            bag.tf(ns, [("map", "odom", T_map_odom)])
        bag.tf(t_end, [("map", "odom", T_map_odom)])
        for ns, T in tf_samples:
            bag.tf(ns, [("odom", "base_link", T)])
        for k in range(frames):
            fr = render_frame(geom, caster, K, poses_gl[k])
            rgbs.append(fr.rgb)
            depths.append(fr.depth.astype(np.float32))
            ns_d = stamps[k] + depth_delay_ns
            if registered and depth_delay_ns == 0:
                dep = fr.depth
            else:
                T_wd = T_map_odom @ odom_base_at(ns_d) @ T_base_link @ T_link_depth
                dep = render_frame(geom, caster, K_depth, opencv_to_opengl(T_wd)).depth
            rgb = fr.rgb
            if distortion is not None:
                rgb = np.clip(np.round(distort_image(rgb, K, distortion, nearest=False)), 0, 255).astype(
                    np.uint8
                )
                dep = distort_image(dep, K, distortion, nearest=True)
            D = tuple(distortion) if distortion is not None else (0.0,) * 5
            bag.camera_info(
                "/camera/color/camera_info", stamps[k], "camera_color_optical_frame", K, D, distortion_model
            )
            bag.camera_info(
                info_depth, ns_d, depth_frame, K_depth, D if registered else (0.0,) * 5, distortion_model
            )
            if color_format in ("rgb8", "bgr8"):
                bag.image(color_topic, stamps[k], "camera_color_optical_frame",
                          rgb[..., ::-1] if color_format == "bgr8" else rgb, color_format)  # fmt: skip
            else:
                buf = _encode(Image.fromarray(rgb), "JPEG" if color_format == "jpeg" else "PNG")
                bag.compressed(color_topic + "/compressed", stamps[k], "camera_color_optical_frame", buf,
                               f"rgb8; {color_format} compressed bgr8")  # fmt: skip
            mm = np.round(np.nan_to_num(dep) * 1000.0).astype(np.uint16)
            if depth_format == "16UC1":
                bag.image(depth_topic, ns_d, depth_frame, mm, "16UC1", big_endian=k % 2 == 1)
            elif depth_format == "32FC1":
                f = np.where(dep > 0, dep, np.nan).astype(np.float32)
                bag.image(depth_topic, ns_d, depth_frame, f, "32FC1")
            else:
                payload = np.zeros(3, dtype=np.int32).tobytes() + _encode(Image.fromarray(mm), "PNG")
                bag.compressed(depth_topic + "/compressedDepth", ns_d, depth_frame, payload,
                               "16UC1; compressedDepth png")  # fmt: skip
    return SyntheticBag(path, K, K_depth, stamps, c2w, rgbs, depths, T_color_depth)


def _encode(im, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()
