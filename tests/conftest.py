"""Session-wide fixtures: one synthetic ``tiny`` scene (exact ground truth) shared read-only by the suite.

Tests that modify a scene copy it first (``shutil.copytree``); the shared folder is never written after
it is made, so tests can run in any order.
"""

from __future__ import annotations

import fcntl
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# tests/helpers is imported as the top-level package ``helpers`` (pytest puts tests/ on sys.path)
sys.path.insert(0, str(Path(__file__).parent))

# A suite started in the background of a non-interactive shell (`cmd &`, nohup, some CI runners) inherits
# SIGINT ignored, and so would every process the tests start: the Ctrl-C tests would send SIGINT into the
# void. Python's own handler here gives the children the default disposition again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _made_once(tmp_path_factory, worker_id: str, name: str, make: Callable[[Path], object]) -> Path:
    """``root / name``, made by ``make(root / name)`` once per test run. Session fixtures are per process,
    so under pytest-xdist every worker would otherwise make its own copy of the same scene or export: the
    workers share the run's temporary folder and take turns through a file lock; the first one makes it,
    the others find it complete. Only for read-only fixtures."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the run's folder, above each worker's own
    folder, done = root / name, root / f"{name}.complete"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if make() raises
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory, worker_id) -> Path:
    """The built-in ``tiny`` preset, seed 0, with its default sensor and label noise."""
    from simgen.synth import synthesize

    def make(root: Path) -> None:
        synthesize(root / "tiny", preset="tiny", seed=0)

    return _made_once(tmp_path_factory, worker_id, "tiny_scene", make) / "tiny"


@pytest.fixture(scope="session")
def tiny_scene(tiny_scene_dir):
    """:func:`tiny_scene_dir` loaded (validated) as a :class:`simgen.data.scene.Scene`."""
    from simgen.data.scene import load_scene

    return load_scene(tiny_scene_dir)


@pytest.fixture(scope="session")
def tiny_drift_scene_dir(tmp_path_factory, worker_id) -> Path:
    """``tiny`` seed 0 with strong pose drift alone (5 cm and 3 deg RMS per 10 m, the realistic profile's
    1.5 cm / 1 deg scaled up so a 16-frame walk drifts measurably); ``gt/gt.json`` holds the true poses."""
    from simgen.synth import synthesize

    def make(root: Path) -> None:
        synthesize(root / "tiny", preset="tiny", seed=0, noise={"drift_trans_m": 0.05, "drift_rot_deg": 3.0})

    return _made_once(tmp_path_factory, worker_id, "tiny_drift", make) / "tiny"


@pytest.fixture(scope="session")
def served_gt(tmp_path_factory, worker_id):
    """The noise-free ``tiny`` scene's exact GT mesh as a served folder (tests/helpers/served_gt.py):
    ``(scene with GT, served folder, {GT segment id: expected server segment id})``. Read-only."""
    from helpers.served_gt import make_served_gt, read_served_gt

    return read_served_gt(_made_once(tmp_path_factory, worker_id, "served_gt", make_served_gt))


@pytest.fixture(scope="session")
def tiny_gt_export(tmp_path_factory, worker_id) -> Path:
    """The ``tiny`` preset's exact GT mesh as a build, exported by the real pipeline with the default
    colliders and physics checks (tests/helpers/sim.py: ``synthetic_export``). Read-only: tests that write
    into an export copy it first."""
    from helpers.sim import synthetic_export

    return (
        _made_once(tmp_path_factory, worker_id, "tiny_gt_export", lambda r: synthetic_export(r, "tiny"))
        / "export"
    )


@pytest.fixture(scope="session")
def _box_export(tmp_path_factory, worker_id) -> Path:
    from helpers.sim import box_export

    return _made_once(tmp_path_factory, worker_id, "box_export", box_export) / "export"


@pytest.fixture(scope="module")
def box_export_copy(_box_export, tmp_path_factory) -> Path:
    """The box scene (tests/helpers/serve_scenes.py) built and exported by the real pipeline once per
    session; each module gets its own copy (build beside export, as made) to write into."""
    root = tmp_path_factory.mktemp("box")
    shutil.copytree(_box_export.parent, root, dirs_exist_ok=True)
    return root / _box_export.name


@pytest.fixture(scope="module")
def app_render(tmp_path_factory):
    """``render(body) -> result`` through the real Flask app (no sockets) of the box scene
    (tests/helpers/serve_scenes.py)."""
    from helpers.serve_scenes import make_build

    from simgen.serve.app import create_app
    from simgen.serve.client import decode_npz
    from simgen.serve.scene import load_render_scene

    scene = load_render_scene(make_build(tmp_path_factory.mktemp("gz") / "build"))
    client = create_app(scene).test_client()

    def render(body: dict) -> dict:
        r = client.post("/render", json=body)
        assert r.status_code == 200, r.data
        return decode_npz(r.data)

    return render


@pytest.fixture
def plugin_module(monkeypatch, app_render):
    """sensor_plugin/simgen_camera_system.py imported against fake gz modules, its HTTP client replaced by
    the in-process app: ``(module, world, msg_types)`` (tests/helpers/gazebo.py)."""
    from helpers.gazebo import load_plugin

    return load_plugin(monkeypatch, app_render)
