"""requirements.lock against pyproject.toml (issue #18): every dependency pinned, inside its range.

Fails after a dependency is added or a range changed without `bash scripts/lock.sh`, which rewrites
the lock that scripts/setup.sh installs and CI tests.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(d) for d in project["dependencies"]]
    wanted += [Requirement(d) for d in project["optional-dependencies"]["test"]]
    pins = lock_pins()
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate():
            continue  # not needed on this platform
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run bash scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]} outside {req}: run bash scripts/lock.sh"
        )


def test_torch_pin_is_portable_and_cpu_only():
    pins = lock_pins()
    # No local label: "torch==X" matches the CPU build (X+cpu) where pip is offered it, and PyPI's X.
    assert re.fullmatch(r"\d+(\.\d+)+", pins["torch"]), pins["torch"]
    # Resolved against the CPU build: the CUDA build's nvidia-* and triton packages would be gigabytes.
    assert not [p for p in pins if p.startswith("nvidia-") or p == "triton"]


def test_readme_commands_need_no_activation():
    readme = (ROOT / "README.md").read_text()
    assert "\nbash scripts/setup.sh && bash scripts/demo.sh\n" in readme
    assert "\nbash scripts/setup.sh && .venv/bin/python -m pytest -q\n" in readme
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "libusb" not in setup  # not a dependency (it was installed "for Open3D")
