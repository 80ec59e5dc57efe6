"""Phone captures: Record3D (.r3d and unzipped) and nerfstudio ns-process-data folders, built from a
synthetic scene written in those layouts, imported and compared with the exact data."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from simgen.cli import main as simgen_main
from simgen.data import io
from simgen.data.importers.common import DatasetImportError
from simgen.data.importers.nerfstudio import NerfstudioConfig, import_nerfstudio
from simgen.data.importers.record3d import Record3DConfig, import_record3d
from simgen.data.scene import load_scene
from simgen.synth import synthesize

try:
    import liblzfse
except ImportError:  # the optional 'phone' extra: only the Record3D tests need it
    liblzfse = None
needs_lzfse = pytest.mark.skipif(
    liblzfse is None, reason="pyliblzfse not installed (pip install 'simgen[phone]')"
)
N = 6


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same scene and walk rendered at 96x72 (the depth camera) and 192x144 (the RGB camera)."""
    root = tmp_path_factory.mktemp("phone")
    lo = load_scene(synthesize(root / "lo", "tiny", seed=1, noise=False, frames=N), validate=False)
    hi = load_scene(synthesize(root / "hi", "tiny", seed=1, noise=False, frames=N, width=192, height=144),
                    validate=False)  # fmt: skip
    for a, b in zip(lo.frames, hi.frames, strict=True):
        np.testing.assert_array_equal(a.c2w, b.c2w)  # resolution does not move the walk
    return lo, hi


def _K(scene) -> np.ndarray:
    K = scene.frames[0].intrinsics
    return np.array([[K.fx, 0, K.cx], [0, K.fy, K.cy], [0, 0, 1.0]])


def _conf(i: int) -> np.ndarray:
    conf = np.full((72, 96), 2, dtype=np.uint8)
    conf[10:20, 30:50] = 0  # low confidence: dropped at --min-confidence 1
    conf[40:45, 0:10] = 1
    return conf


def write_r3d(path: Path, pair, unzipped: bool = False, edit=None) -> Path:
    lo, hi = pair
    poses = []
    for f in lo.frames:
        q = Rotation.from_matrix(f.c2w[:3, :3]).as_quat()  # x y z w
        poses.append([*q.tolist(), *f.c2w[:3, 3].tolist()])
    meta = {"w": 192, "h": 144, "dw": 96, "dh": 72, "K": _K(hi).T.ravel().tolist(), "poses": poses, "fps": 60}
    files: dict[str, bytes] = {}
    for i in range(N):
        buf = __import__("io").BytesIO()
        Image.fromarray(hi.rgb(i)).save(buf, format="JPEG", quality=95)
        files[f"rgbd/{i}.jpg"] = buf.getvalue()
        files[f"rgbd/{i}.depth"] = liblzfse.compress(lo.depth(i).astype(np.float32).tobytes())
        files[f"rgbd/{i}.conf"] = liblzfse.compress(_conf(i).tobytes())
    if edit:
        edit(meta, files)
    files["metadata"] = json.dumps(meta).encode()
    if unzipped:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _check_roundtrip(out: Path, pair, min_conf: int = 1) -> None:
    lo, _ = pair
    scene = load_scene(out, validate=False)
    assert len(scene) == N
    K, Ko = scene.frames[0].intrinsics, lo.frames[0].intrinsics
    assert (K.width, K.height) == (96, 72)
    np.testing.assert_allclose([K.fx, K.fy, K.cx, K.cy], [Ko.fx, Ko.fy, Ko.cx, Ko.cy], rtol=1e-12)
    for i in range(N):
        np.testing.assert_allclose(scene.frames[i].c2w, lo.frames[i].c2w, atol=2e-7)
        d, true = scene.depth(i), lo.depth(i)
        keep = _conf(i) >= min_conf
        assert np.abs(d[keep] - true[keep]).max() <= 0.0005 + 1e-7  # 1 mm PNG steps
        assert np.all(d[~keep] == 0)
        err = np.abs(scene.rgb(i).astype(float) - lo.rgb(i).astype(float))
        assert err.mean() < 12  # 2x2 box average of the 192x144 render (+ JPEG) vs the 96x72 render


@needs_lzfse
def test_record3d_r3d_roundtrip(pair, tmp_path):
    r3d = write_r3d(tmp_path / "cap.r3d", pair)
    out = import_record3d(r3d, tmp_path / "scene", Record3DConfig(quiet=True))
    _check_roundtrip(out, pair)
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["categories"] == [] and "panoptic_file_path" not in meta["frames"][0]
    assert meta["source"]["format"] == "record3d" and meta["source"]["depth_size"] == [96, 72]


@needs_lzfse
def test_record3d_unzipped_folder_and_cli(pair, tmp_path, capsys):
    src = write_r3d(tmp_path / "cap", pair, unzipped=True)
    out = tmp_path / "scene"
    assert simgen_main(["import", "record3d", str(src), str(out), "--min-confidence", "2", "--quiet"]) == 0
    _check_roundtrip(out, pair, min_conf=2)
    assert simgen_main(["import", "record3d", str(src), str(out), "--quiet"]) == 1
    assert "output folder is not empty" in capsys.readouterr().err
    assert simgen_main(["import", "record3d", str(src), str(out), "--min-confidence", "3"]) == 2


@needs_lzfse
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m, f: f.pop("rgbd/3.depth"), "rgbd/3.depth: missing"),
        (lambda m, f: m["poses"][2].__setitem__(3, 5.0), "poses[2] is not a unit quaternion"),
        (
            lambda m, f: f.__setitem__("rgbd/1.depth", liblzfse.compress(b"\0" * 400)),
            "expected 96x72 float32",
        ),
        (lambda m, f: f.__setitem__("rgbd/1.depth", b"garbage"), "rgbd/1.depth: not LZFSE data"),
        (lambda m, f: m.pop("K"), "missing field(s) K"),
        (lambda m, f: m.__setitem__("poses", [[0, 0, 0, 1]]), "poses must be [qx, qy, qz, qw, tx, ty, tz]"),
    ],
)
def test_record3d_errors_name_the_file(pair, tmp_path, edit, message):
    r3d = write_r3d(tmp_path / "bad.r3d", pair, edit=edit)
    with pytest.raises(DatasetImportError) as e:
        import_record3d(r3d, tmp_path / "scene", Record3DConfig(quiet=True))
    assert message in str(e.value) and "bad.r3d" in str(e.value)
    assert not (tmp_path / "scene").exists()  # nothing half-written left behind


@needs_lzfse
def test_record3d_refuses_other_layouts(tmp_path):
    (tmp_path / "exr" / "depth").mkdir(parents=True)
    (tmp_path / "exr" / "depth" / "0.exr").write_bytes(b"x")
    with pytest.raises(DatasetImportError, match="EXR export is not supported"):
        import_record3d(tmp_path / "exr", tmp_path / "o", Record3DConfig(quiet=True))
    (tmp_path / "x.r3d").write_text("not a zip")
    with pytest.raises(DatasetImportError, match="x.r3d: not a .r3d file"):
        import_record3d(tmp_path / "x.r3d", tmp_path / "o", Record3DConfig(quiet=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetImportError, match="no 'metadata'"):
        import_record3d(tmp_path / "empty", tmp_path / "o", Record3DConfig(quiet=True))


# ----------------------------------------------------------------------------- nerfstudio


def write_ns(root: Path, pair, per_frame: bool = False, edit=None) -> Path:
    """An ns-process-data polycam-style folder: 192x144 JPEGs, 96x72 mm depth PNGs, OpenGL poses."""
    lo, hi = pair
    Kh = hi.frames[0].intrinsics
    intr = {"fl_x": Kh.fx, "fl_y": Kh.fy, "cx": Kh.cx, "cy": Kh.cy, "w": 192, "h": 144}
    meta: dict = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": []}
    if not per_frame:
        meta.update(intr)
    for i in range(N):
        rgb, depth = f"images/frame_{i + 1:05d}.jpg", f"depth/frame_{i + 1:05d}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(hi.rgb(i)).save(root / rgb, quality=95)
        io.write_depth(root / depth, lo.depth(i), 0.001)
        fr = {"file_path": rgb, "depth_file_path": depth, "transform_matrix": lo.frames[i].c2w.tolist()}
        if per_frame:
            fr.update(intr)
        meta["frames"].append(fr)
    if edit:
        edit(meta)
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("per_frame", [False, True])
def test_nerfstudio_roundtrip(pair, tmp_path, per_frame):
    src = write_ns(tmp_path / "ns", pair, per_frame)
    out = import_nerfstudio(src, tmp_path / "scene", NerfstudioConfig(quiet=True))
    _check_roundtrip(out, pair, min_conf=0)
    assert json.loads((out / "transforms.json").read_text())["source"]["depth_units_per_metre"] == 1000.0


def test_nerfstudio_cli_every_and_test_split(pair, tmp_path):
    src = write_ns(tmp_path / "ns", pair)
    out = tmp_path / "scene"
    assert (
        simgen_main(
            ["import", "nerfstudio", str(src), str(out), "--every", "2", "--test-every", "2", "--quiet"]
        )
        == 0
    )
    scene = load_scene(out, validate=False)
    assert len(scene) == 3 and scene.split_indices("test") == [0, 2]
    np.testing.assert_allclose(scene.frames[1].c2w, pair[0].frames[2].c2w, atol=1e-8)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["frames"][1].pop("depth_file_path"), "frames[1]): no depth_file_path"),
        (lambda m: m.__setitem__("k1", 0.1), "non-zero distortion {'k1': 0.1}"),
        (
            lambda m: m.__setitem__("camera_model", "EQUIRECTANGULAR"),
            "EQUIRECTANGULAR is not a pinhole model",
        ),
        (
            lambda m: m["frames"][2].__setitem__("depth_file_path", "depth/nope.png"),
            "depth/nope.png: missing",
        ),
        (
            lambda m: m["frames"][0]["transform_matrix"][0].__setitem__(0, 3.0),
            "frames[0]): transform_matrix is not a rigid",
        ),
        (lambda m: m.__setitem__("w", 200), "size 192x144, transforms.json says 200x144"),
    ],
)
def test_nerfstudio_errors_name_the_frame(pair, tmp_path, edit, message):
    src = write_ns(tmp_path / "ns", pair, edit=edit)
    with pytest.raises(DatasetImportError) as e:
        import_nerfstudio(src, tmp_path / "scene", NerfstudioConfig(quiet=True))
    assert message in str(e.value)
    assert not (tmp_path / "scene").exists()  # validated before anything is written
