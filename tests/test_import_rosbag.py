"""``simgen import rosbag``: round trips of synthetic robot bags against exact data, and every refusal.

The round-trip bags (tests/helpers/rosbag_writer.py) are renders of the ``tiny`` synthetic scene
recorded as a robot would: colour + depth + CameraInfo, TF map -> odom -> base_link -> camera_link
-> optical frames, with the odom -> base_link samples *between* the image stamps, so the poses are
right only if TF is interpolated correctly at each stamp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.rosbag_writer import (
    T0_NS,
    BagWriter,
    distort_image,
    distort_points,
    header,
    rigid,
    write_synthetic_bag,
)
from scipy.spatial.transform import Rotation, Slerp

from simgen.cli import main
from simgen.data.camera import Intrinsics
from simgen.data.importers.common import DatasetImportError
from simgen.data.importers.rosbag import RosbagConfig, import_rosbag, select_frames, sharpness
from simgen.data.importers.rosbag_camera import CameraModel, undistort_color, undistort_map
from simgen.data.importers.rosbag_tf import TFTree
from simgen.data.scene import load_scene, validate_scene

EVERY = RosbagConfig(min_translation=0, min_rotation=0, blur_ratio=0, quiet=True)


def rot_deg(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(A[:3, :3].T @ B[:3, :3]).as_rotvec())))


def check_poses_and_intrinsics(scene, gt) -> None:
    assert len(scene.frames) == len(gt.stamps)
    for i, f in enumerate(scene.frames):
        assert np.linalg.norm(f.c2w_cv[:3, 3] - gt.c2w_cv[i][:3, 3]) < 1e-3  # 1 mm
        assert rot_deg(f.c2w_cv, gt.c2w_cv[i]) < 0.1
        K = f.intrinsics
        assert (K.fx, K.fy, K.width, K.height) == (gt.K.fx, gt.K.fy, gt.K.width, gt.K.height)
        assert abs(K.cx - gt.K.cx) < 1e-12 and abs(K.cy - gt.K.cy) < 1e-12


ROUND_TRIPS = [
    # storage, colour, depth, registered
    ("mcap", "rgb8", "16UC1", True),
    ("sqlite3", "bgr8", "32FC1", True),
    ("mcap", "png", "compressedDepth", True),
    ("sqlite3", "jpeg", "16UC1", False),
    ("mcap", "rgb8", "32FC1", False),
]


@pytest.mark.parametrize("storage,color,depth,registered", ROUND_TRIPS)
def test_round_trip(tmp_path: Path, storage: str, color: str, depth: str, registered: bool) -> None:
    gt = write_synthetic_bag(
        tmp_path / "bag",
        storage=storage,
        color_format=color,
        depth_format=depth,
        registered=registered,
        depth_delay_ns=0 if registered else 3_000_000,  # unregistered depth also 3 ms late
    )
    report = import_rosbag(gt.path, tmp_path / "scene", EVERY)
    assert report.frames == len(gt.stamps) and report.skipped == {}
    assert report.world_frame == "map" and report.camera_frame == "camera_color_optical_frame"
    assert report.depth_registration == ("copied" if registered else "reprojected")
    scene = load_scene(tmp_path / "scene", validate=False)
    check_poses_and_intrinsics(scene, gt)
    for i in range(len(scene.frames)):
        rgb = scene.rgb(i).astype(int)
        if color == "jpeg":
            assert np.abs(rgb - gt.rgb[i]).mean() < 4.0  # JPEG quality 95 of a flat-shaded render
        else:
            assert np.array_equal(rgb, gt.rgb[i])
        d, g = scene.depth(i), gt.depth[i]
        if registered:
            # Quantisation: the bag holds millimetres (16UC1) or float metres (32FC1); the scene mm.
            assert np.array_equal(d > 0, g > 0)
            assert np.abs(d - g)[g > 0].max() <= 0.0005 + 1e-6
        else:
            # Reprojected from a camera 3 cm away with other intrinsics, 3 ms later through TF: every
            # surface both cameras see gets depth; silhouette pixels (the mesh of a 96x72 depth image
            # resolves an edge to a pixel) and pixels the depth camera cannot see may miss.
            both = (d > 0) & (g > 0)
            assert both.sum() >= 0.97 * (g > 0).sum()
            err = np.abs(d - g)[both]
            assert np.median(err) <= 0.001 and np.percentile(err, 95) <= 0.002
    meta = json.loads((tmp_path / "scene" / "transforms.json").read_text())
    assert meta["categories"] == [] and meta["source"]["dataset"] == "rosbag"
    assert meta["source"]["stamps"][0] == f"{gt.stamps[0] // 10**9}.{gt.stamps[0] % 10**9:09d}"


def test_unlabelled_scene_validates_except_labels(tmp_path: Path) -> None:
    """The import has no pseudo-labels; `simgen validate` says so and finds nothing else wrong."""
    gt = write_synthetic_bag(tmp_path / "bag", frames=3)
    import_rosbag(gt.path, tmp_path / "scene", EVERY)
    _, problems, stats = validate_scene(tmp_path / "scene")
    msgs = sorted({p.message for p in problems})
    assert msgs == ["missing panoptic_file_path", "no categories"]
    assert stats["frames"] == 3 and stats["depth_range_m"][0] > 0


def test_distortion_is_removed(tmp_path: Path) -> None:
    """A plumb_bob camera: the bag holds distorted colour and depth (rendered through the inverse
    model, test-side); the import must give back the pinhole images."""
    from scipy.ndimage import binary_erosion, map_coordinates, maximum_filter, minimum_filter

    D = (-0.15, 0.04, 0.002, -0.003, 0.0)
    gt = write_synthetic_bag(tmp_path / "bag", frames=3, width=192, height=144, distortion=D)
    import_rosbag(gt.path, tmp_path / "scene", EVERY)
    scene = load_scene(tmp_path / "scene", validate=False)
    check_poses_and_intrinsics(scene, gt)
    K = gt.K
    # Pixels whose distorted source pixel has content: the bag's distorted images are sampled from
    # a pinhole render of the same size, so their rim sees past it and is black (test-side only).
    rows, cols = undistort_map(CameraModel(K, "plumb_bob", D, "c", "/c"))
    rendered = distort_image(np.ones((K.height, K.width)), K, D, nearest=False) > 1 - 1e-9
    inner = binary_erosion(map_coordinates(rendered.astype(float), [rows, cols], order=0) > 0, iterations=2)
    assert inner.mean() > 0.9
    for i in range(3):
        rgb, ref = scene.rgb(i).astype(float), gt.rgb[i].astype(float)
        err = np.abs(rgb - ref).mean(axis=2)[inner]
        raw = np.abs(distort_image(gt.rgb[i], K, D, nearest=False) - ref).mean(axis=2)[inner]
        # Two bilinear resamplings (distorting, undistorting) blur edges by under a pixel: the
        # median pixel is within 2 levels, and the error is far below the uncorrected image's.
        assert np.median(err) <= 2.0 and err.mean() < 0.35 * raw.mean()
        d, g = scene.depth(i), gt.depth[i]
        ok = inner & (g > 0)
        # Depth is resampled nearest-neighbour both ways (no depth is invented between surfaces):
        # each pixel gets the depth of itself or of a neighbour, to the millimetre.
        lo, hi = minimum_filter(g, 3) - 0.0005 - 1e-6, maximum_filter(g, 3) + 0.0005 + 1e-6
        assert ((d >= lo) & (d <= hi))[ok].mean() > 0.99


def test_distortion_models_match_opencv_formulas() -> None:
    """The forward models against OpenCV's documented formulas (written independently, test-side)."""
    from simgen.data.importers.rosbag_camera import distort

    rng = np.random.default_rng(5)
    x, y = rng.uniform(-0.7, 0.7, 200), rng.uniform(-0.5, 0.5, 200)
    D5 = (-0.28, 0.07, 0.0012, -0.0009, 0.013)
    assert np.allclose(distort(x, y, "plumb_bob", D5), distort_points(x, y, D5), atol=1e-12, rtol=0)
    k1, k2, p1, p2, k3, k4, k5, k6 = D8 = (0.4, -0.1, 0.001, 0.002, 0.02, 0.6, -0.05, 0.01)
    r2 = x**2 + y**2
    f = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    ref = (x * f + 2 * p1 * x * y + p2 * (r2 + 2 * x**2), y * f + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y)
    assert np.allclose(distort(x, y, "rational_polynomial", D8), ref, atol=1e-12, rtol=0)


def test_undistort_identity_without_distortion() -> None:
    K = Intrinsics(50.0, 50.0, 16.0, 12.0, 32, 24)
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = undistort_color(rgb, undistort_map(CameraModel(K, "none", (), "c", "/c")))
    assert np.array_equal(out, rgb)


def test_unsupported_distortion_model_is_refused(tmp_path: Path) -> None:
    gt = write_synthetic_bag(
        tmp_path / "bag", frames=2, distortion=(0.1, 0.01, 0.0, 0.0, 0.0), distortion_model="equidistant"
    )
    with pytest.raises(
        DatasetImportError, match=r"/camera/color/camera_info .*distortion_model 'equidistant'"
    ):
        import_rosbag(gt.path, tmp_path / "scene", EVERY)


# ----------------------------------------------------------------------------- TF


def test_tf_interpolation_matches_scipy_slerp() -> None:
    rng = np.random.default_rng(3)
    stamps = T0_NS + np.cumsum(rng.integers(5_000_000, 50_000_000, 6))
    rots = Rotation.from_rotvec(rng.normal(size=(6, 3)))
    trans = rng.normal(size=(6, 3))
    tf = TFTree()
    bag_msgs = []
    for s, r, t in zip(stamps, rots, trans, strict=True):
        bag_msgs.append((int(s), rigid(r.as_matrix(), t)))
    _fill(tf, [("odom", "base", s, T) for s, T in bag_msgs], static=False)
    _fill(
        tf,
        [("base", "cam", 0, rigid(Rotation.from_euler("x", 30, degrees=True).as_matrix(), (0, 0, 1)))],
        True,
    )
    tf.finalize()
    q = np.array([stamps[0], stamps[-1], *rng.integers(stamps[0], stamps[-1], 20)], dtype=np.int64)
    T, ok = tf.lookup("odom", "cam", q)
    assert ok.all()
    rel = (stamps - stamps[0]).astype(float)
    ref_R = Slerp(rel, rots)((q - stamps[0]).astype(float))
    ref_t = np.stack([np.interp((q - stamps[0]).astype(float), rel, trans[:, k]) for k in range(3)], 1)
    T_bc = rigid(Rotation.from_euler("x", 30, degrees=True).as_matrix(), (0, 0, 1))
    for j in range(len(q)):
        ref = rigid(ref_R[j].as_matrix(), ref_t[j]) @ T_bc
        assert np.allclose(T[j], ref, atol=1e-9)
    # The inverse direction, and stamps outside the samples are refused, not extrapolated.
    T_inv, _ = tf.lookup("cam", "odom", q[:3])
    assert np.allclose(T_inv, np.linalg.inv(T[:3]), atol=1e-9)
    _, ok = tf.lookup("odom", "cam", np.array([stamps[0] - 1, stamps[-1] + 1]))
    assert not ok.any()


def test_tf_two_parents_is_refused() -> None:
    tf = TFTree()
    _fill(tf, [("a", "cam", 0, np.eye(4)), ("b", "cam", 0, np.eye(4))], True)
    with pytest.raises(DatasetImportError, match="cam: parents a, b"):
        tf.finalize()


def _fill(tf: TFTree, edges, static: bool) -> None:
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    for parent, child, ns, T in edges:
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        msg = ts.types["tf2_msgs/msg/TFMessage"](
            transforms=[
                ts.types["geometry_msgs/msg/TransformStamped"](
                    header=header(ts, ns, parent),
                    child_frame_id=child,
                    transform=ts.types["geometry_msgs/msg/Transform"](
                        translation=ts.types["geometry_msgs/msg/Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                        rotation=ts.types["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
                    ),
                )
            ]
        )
        tf.add_message(msg, "/tf_static" if static else "/tf", static)


# ----------------------------------------------------------------------------- selection


def test_select_frames_by_motion_and_sharpness() -> None:
    n = 30
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.arange(n) * 0.02  # 2 cm per frame along x
    c2w[20:, :3, :3] = Rotation.from_euler("z", 12, degrees=True).as_matrix()  # a 12 degree turn at 20
    stamps = T0_NS + np.arange(n, dtype=np.int64) * 33_333_333
    sharp = np.full(n, 100.0)
    sharp[[5, 6]] = 20.0  # two blurred frames
    cfg = RosbagConfig(min_translation=0.05, min_rotation=10.0, blur_ratio=0.5)
    kept, dropped = select_frames(c2w, sharp, stamps, cfg)
    assert dropped[5] == dropped[6] == "blurred"
    # 0 kept; 3 (6 cm) kept; 5, 6 blurred; 7 is 8 cm from 3; then every 3rd (6 cm) until the turn.
    assert kept[:4] == [0, 3, 7, 10] and 20 in kept
    assert all(dropped[i] == "motion" for i in (1, 2, 4, 8, 9))
    kept_all, _ = select_frames(c2w, None, stamps, RosbagConfig(min_translation=0, min_rotation=0))
    assert kept_all == list(range(n))
    kept_max, dropped_max = select_frames(
        c2w, None, stamps, RosbagConfig(min_translation=0, min_rotation=0, max_frames=4)
    )
    assert kept_max == [0, 1, 2, 3] and dropped_max[4] == "max-frames"


def test_sharpness_drops_with_blur() -> None:
    from scipy.ndimage import uniform_filter

    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    blurred = uniform_filter(rgb.astype(float), size=(5, 5, 1)).astype(np.uint8)
    assert sharpness(blurred) < 0.2 * sharpness(rgb)


@pytest.mark.parametrize("color", ["rgb8", "jpeg"])
def test_blurred_frames_are_skipped_end_to_end(tmp_path: Path, color: str) -> None:
    path = tmp_path / "bag"
    _small_bag(path, n=9, blurred=(4,), colors=(("/cam/color/image_raw", color),))
    report = import_rosbag(
        path, tmp_path / "scene", RosbagConfig(min_translation=0, min_rotation=0, quiet=True)
    )
    assert report.frames == 8 and report.skipped == {"blurred": 1}
    assert "blurred" in report.skipped_examples[0] and _stamp_text(4) in report.skipped_examples[0]


# ----------------------------------------------------------------------------- refusals


def _stamp_text(k: int) -> str:
    ns = T0_NS + k * 33_333_333
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def _small_bag(
    path: Path,
    n: int = 3,
    storage: str = "mcap",
    colors=(("/cam/color/image_raw", "rgb8"),),
    depths=(("/cam/depth/image_raw", "16UC1"),),
    infos: bool = True,
    depth_offset_ns: int = 0,
    tf_stamps: tuple[int, int] | None = None,
    extra_static: bool = False,
    blurred: tuple[int, ...] = (),
) -> None:
    """A tiny 64x48 RGB-D bag, depth registered to colour (frame 'cam_color'); colour encoding
    'jpeg' writes a CompressedImage on <topic>/compressed."""
    import io

    from PIL import Image
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(1)
    K = Intrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)
    stamps = [T0_NS + k * 33_333_333 for k in range(n)]
    lo, hi = tf_stamps or (stamps[0] - 1, stamps[-1] + 1)
    with BagWriter(path, storage) as bag:
        bag.tf(T0_NS, [("base", "cam_color", rigid())], static=True)
        if extra_static:
            bag.tf(T0_NS, [("elsewhere", "marker", rigid())], static=True)
        for ns in (lo, hi):
            bag.tf(ns, [("odom", "base", rigid(None, (ns - lo) * 1e-9 * np.array([1.0, 0, 0])))])
        for k, ns in enumerate(stamps):
            tex = rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)
            if k in blurred:
                tex = uniform_filter(tex.astype(float), size=(5, 5, 1)).astype(np.uint8)
            for topic, enc in colors:
                if enc == "jpeg":
                    buf = io.BytesIO()
                    Image.fromarray(tex).save(buf, format="JPEG", quality=95)
                    bag.compressed(
                        topic + "/compressed", ns, "cam_color", buf.getvalue(), "rgb8; jpeg compressed bgr8"
                    )
                else:
                    bag.image(topic, ns, "cam_color", tex if enc != "rgb16" else tex.astype(np.uint16), enc)
                if infos:
                    bag.camera_info(topic.rsplit("/", 1)[0] + "/camera_info", ns, "cam_color", K)
            for topic, enc in depths:
                arr = np.full((48, 64), 1500, np.uint16) if enc == "16UC1" else np.full((48, 64), 9, np.uint8)
                bag.image(topic, ns + depth_offset_ns, "cam_color", arr, enc)


def _import(tmp_path: Path, **cfg):
    return import_rosbag(tmp_path / "bag", tmp_path / "scene", RosbagConfig(quiet=True, **cfg))


def test_missing_topic(tmp_path: Path) -> None:
    _small_bag(tmp_path / "bag")
    with pytest.raises(DatasetImportError, match=r"colour topic /nope \(--color-topic\) is not in the bag"):
        _import(tmp_path, color_topic="/nope")
    with pytest.raises(
        DatasetImportError, match=r"CameraInfo topic /nope \(--depth-info-topic\) is not in the bag"
    ):
        _import(tmp_path, depth_info_topic="/nope")


def test_no_depth_stream(tmp_path: Path) -> None:
    _small_bag(tmp_path / "bag", depths=())
    with pytest.raises(
        DatasetImportError, match=r"no depth topic .* in the bag; image topics: /cam/color/image_raw"
    ):
        _import(tmp_path)


def test_ambiguous_bag_lists_candidates(tmp_path: Path) -> None:
    _small_bag(tmp_path / "bag", colors=(("/a/color/image_raw", "rgb8"), ("/b/color/image_raw", "bgr8")))
    with pytest.raises(DatasetImportError, match="2 colour streams; choose one with --color-topic") as e:
        _import(tmp_path)
    assert e.value.problems == ["/a/color/image_raw [sensor_msgs/msg/Image, 3 msgs]",
                                "/b/color/image_raw [sensor_msgs/msg/Image, 3 msgs]"]  # fmt: skip
    assert _import(tmp_path, color_topic="/b/color/image_raw", min_translation=0, min_rotation=0).frames == 3


def test_no_tf_path(tmp_path: Path) -> None:
    _small_bag(tmp_path / "bag", extra_static=True)
    with pytest.raises(
        DatasetImportError,
        match=r"no TF path from 'elsewhere' to 'cam_color' \(--world-frame .*/cam/color/image_raw\): "
        r"they are in separate TF trees \(roots 'elsewhere' and 'odom'\)",
    ):
        _import(tmp_path, world_frame="elsewhere")
    with pytest.raises(
        DatasetImportError, match=r"frame 'map' is not in /tf or /tf_static \(frames there: base, "
    ):
        _import(tmp_path, world_frame="/map")


def test_stamps_never_pair(tmp_path: Path) -> None:
    _small_bag(tmp_path / "bag", depth_offset_ns=500_000_000)
    with pytest.raises(
        DatasetImportError,
        match=rf"colour \(/cam/color/image_raw\) and depth \(/cam/depth/image_raw\) header stamps never pair within "
        rf"--sync-tolerance 0.02 s: the closest are colour {_stamp_text(2)} and depth {_stamp_text(0)[:-9]}",
    ):
        _import(tmp_path)


@pytest.mark.parametrize(
    "kind,flag,enc,msg",
    [
        (
            "color",
            "color_topic",
            "rgb16",
            "/cam/color/image_raw at stamp {}: unsupported colour encoding 'rgb16'",
        ),
        (
            "depth",
            "depth_topic",
            "8UC1",
            "/cam/depth/image_raw at stamp {}: unsupported depth encoding '8UC1'",
        ),
    ],
)
def test_unsupported_encoding(tmp_path: Path, kind: str, flag: str, enc: str, msg: str) -> None:
    topic = f"/cam/{kind}/image_raw"
    if kind == "color":
        _small_bag(tmp_path / "bag", colors=((topic, enc),))
    else:
        _small_bag(tmp_path / "bag", depths=((topic, enc),))
    with pytest.raises(DatasetImportError, match=msg.format(_stamp_text(0)).replace("(", r"\(")):
        _import(tmp_path, **{flag: topic})


def test_stamps_outside_tf(tmp_path: Path) -> None:
    # TF known only from frame 1 to frame 3 of 5: frames 0 and 4 are skipped, named with their stamps.
    stamps = [T0_NS + k * 33_333_333 for k in range(5)]
    _small_bag(tmp_path / "bag", n=5, tf_stamps=(stamps[1], stamps[3]))
    report = _import(tmp_path, min_translation=0, min_rotation=0, blur_ratio=0)
    assert report.frames == 3 and report.skipped == {"outside the TF time range": 2}
    assert report.skipped_examples[0].startswith(
        f"/cam/color/image_raw stamp {_stamp_text(0)}: TF from 'odom'"
    )
    assert (
        f"known from {_stamp_text(1)} to {_stamp_text(3)} (limited by odom -> base"
        in report.skipped_examples[0]
    )
    # None inside: refused, naming the stamps and the range.
    _small_bag(tmp_path / "bag2", n=2, tf_stamps=(stamps[3], stamps[4]))
    with pytest.raises(
        DatasetImportError, match=rf"stamps {_stamp_text(0)} \.\. {_stamp_text(1)}\) lies inside"
    ):
        import_rosbag(tmp_path / "bag2", tmp_path / "scene2", RosbagConfig(quiet=True))


def test_missing_camera_info(tmp_path: Path) -> None:
    _small_bag(tmp_path / "bag", infos=False)
    with pytest.raises(
        DatasetImportError,
        match=r"no CameraInfo for the colour images of /cam/color/image_raw \(frame 'cam_color', 64x48\)",
    ):
        _import(tmp_path)


def test_not_a_rosbag2(tmp_path: Path) -> None:
    (tmp_path / "x.bag").write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(DatasetImportError, match="a ROS 1 bag; convert it to rosbag2 first"):
        import_rosbag(tmp_path / "x.bag", tmp_path / "scene")
    with pytest.raises(DatasetImportError, match="bag does not exist"):
        import_rosbag(tmp_path / "none", tmp_path / "scene")


# ----------------------------------------------------------------------------- command line


def test_cli(tmp_path: Path, capsys) -> None:
    _small_bag(tmp_path / "bag", n=4, storage="sqlite3")
    out = tmp_path / "scene"
    assert (
        main(
            [
                "import",
                "rosbag",
                str(tmp_path / "bag"),
                str(out),
                "--min-translation",
                "0",
                "--min-rotation",
                "0",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "wrote 4 frame(s)" in err and "simgen label" in err
    assert main(["import", "rosbag", str(tmp_path / "bag"), str(out)]) == 1
    assert "output folder is not empty (pass --overwrite" in capsys.readouterr().err
    assert main(["import", "rosbag", str(tmp_path / "bag"), str(out), "--sync-tolerance", "-1"]) == 2
    assert "--sync-tolerance must be >= 0" in capsys.readouterr().err


def test_decode_padding_byte_order_and_invalid_depth() -> None:
    """Row padding (step > width * bytes), BGRA order, big-endian 16UC1, NaN / inf / negative 32FC1."""
    from rosbags.typesys import Stores, get_typestore

    from simgen.data.importers.rosbag import IMAGE, decode_color, decode_depth

    ts = get_typestore(Stores.ROS2_HUMBLE)
    rng = np.random.default_rng(2)

    def image(arr: np.ndarray, enc: str, pad: int, big: bool = False):
        h, w = arr.shape[:2]
        rows = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder(">" if big else "<"))).view(np.uint8)
        rows = rows.reshape(h, -1)
        data = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1).ravel()
        return ts.types["sensor_msgs/msg/Image"](
            header=header(ts, T0_NS, "c"), height=h, width=w, encoding=enc, is_bigendian=int(big),
            step=rows.shape[1] + pad, data=data,
        )  # fmt: skip

    rgba = rng.integers(0, 255, (5, 7, 4), dtype=np.uint8)
    out = decode_color(image(rgba[..., [2, 1, 0, 3]], "bgra8", pad=3), IMAGE, "t")
    assert np.array_equal(out, rgba[..., :3])
    mm = rng.integers(1, 5000, (5, 7)).astype(np.uint16)
    d = decode_depth(image(mm, "16UC1", pad=2, big=True), IMAGE, "t", 1000.0)
    assert np.allclose(d, mm / 1000.0)
    f = rng.uniform(0.5, 4.0, (5, 7)).astype(np.float32)
    f[0, :3] = [np.nan, np.inf, -1.0]
    d = decode_depth(image(f, "32FC1", pad=4), IMAGE, "t", 1000.0)
    assert np.array_equal(d[0, :3], [0, 0, 0]) and np.array_equal(d[1:], f[1:])
