"""Gaussian scene I/O, initialisation and label-blended panoptic rendering against synthetic GT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.gt import gt_panoptic_mesh
from plyfile import PlyData

from simgen.data.scene import load_scene
from simgen.render.gaussians import GaussianScene, load_ply, render_panoptic, save_ply
from simgen.splat.gaussians import init_from_mesh, init_from_rgbd
from simgen.splat.labels import bake_labels_from_mesh, uplift_semantics

# One thread: on the shared 2-core machine, 2 OpenMP threads under load ran 30x slower (spin waits).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from simgen.synth import synthesize

    return load_scene(
        synthesize(tmp_path_factory.mktemp("splat") / "tiny", preset="tiny", seed=0, noise=False)
    )


def gt_labels(scene, i):
    seg = scene.gt.panoptic(i)
    sem = scene.gt_semantic(i)
    thing = np.isin(sem, scene.thing_ids)
    return sem, np.where(thing, seg, 0), seg > 0


def camera(scene, i):
    f = scene.frames[i]
    return np.linalg.inv(f.c2w_cv), f.intrinsics.matrix(), f.intrinsics.width, f.intrinsics.height


def test_ply_roundtrip_standard_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 50
    scene = GaussianScene(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.randn(n, 3, generator=g),
        opacity_logits=torch.randn(n, generator=g),
        sh=torch.randn(n, 16, 3, generator=g),
        semantic=torch.randint(-1, 10, (n,), generator=g, dtype=torch.int32),
        instance=torch.randint(0, 5, (n,), generator=g, dtype=torch.int32),
    )
    path = tmp_path / "gaussians.ply"
    save_ply(path, scene)
    back = load_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "semantic", "instance"):
        assert torch.equal(getattr(back, name), getattr(scene, name)), name
    v = PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9 + 45 :] == [
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ] + [
        "semantic",
        "instance",
    ]
    # 3DGS stores f_rest channel-major: the 15 red coefficients first, then green, then blue.
    assert np.array_equal(v["f_rest_0"], scene.sh[:, 1, 0].numpy())
    assert np.array_equal(v["f_rest_14"], scene.sh[:, 15, 0].numpy())
    assert np.array_equal(v["f_rest_15"], scene.sh[:, 1, 1].numpy())
    # Bad file: a clear error naming the file.
    bad = tmp_path / "bad.ply"
    from plyfile import PlyElement

    arr = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(bad))
    with pytest.raises(ValueError, match="bad.ply"):
        load_ply(bad)


def test_init_from_rgbd_lies_on_gt_surface(tiny):
    g = init_from_rgbd(tiny, voxel=0.05)
    assert 1000 < len(g) <= 200_000
    mesh = tiny.gt.mesh()
    _, dist, _ = mesh.nearest.on_surface(g.means[::10].numpy())
    assert np.median(dist) < 0.01  # noise-free depth: back-projected points sit on the GT surface


def test_bake_labels_uses_closest_surface_not_closest_vertex(tiny):
    pm = gt_panoptic_mesh(tiny)
    g = init_from_mesh(pm, count=10_000, seed=0)
    # Move the Gaussians off their surface by up to 2 cm; the labels must stay those of that surface.
    g.means += torch.randn(g.means.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    baked = bake_labels_from_mesh(g, pm)
    # The GT mesh is a few big boxes: the nearest vertex is mostly a corner of something else (0.36 here).
    # Points on a box bottom resting on the floor are equidistant from box and floor: ~3 % ambiguous.
    assert (baked.semantic == g.semantic).float().mean() > 0.95
    assert (baked.instance == g.instance).float().mean() > 0.95
    far = bake_labels_from_mesh(g.subset(torch.arange(5)), pm, max_distance=-1.0)
    assert (far.semantic == -1).all() and (far.instance == 0).all()


def test_nearest_faces_is_exact_on_coarse_mesh(tiny):
    import trimesh

    from simgen.splat.labels import nearest_faces

    pm = gt_panoptic_mesh(tiny)
    pts = np.random.default_rng(0).uniform(pm.vertices.min(0), pm.vertices.max(0), size=(500, 3))
    face, dist = nearest_faces(pm.vertices, pm.faces, pts)
    _, ref, _ = trimesh.proximity.closest_point(trimesh.Trimesh(pm.vertices, pm.faces, process=False), pts)
    assert np.abs(dist - ref).max() < 2e-3
    # Through the KD-tree path too: only the 20 biggest faces brute force.
    face2, dist2 = nearest_faces(pm.vertices, pm.faces, pts, max_brute=20, k=64)
    assert np.abs(dist2 - ref).max() < 2e-3


def test_label_blending_matches_gt_panoptic(tiny):
    pm = gt_panoptic_mesh(tiny)
    g = init_from_mesh(pm, count=20_000, seed=0)
    g.opacity_logits[:] = 3.0  # opaque surface splats
    baked = bake_labels_from_mesh(g, pm)
    for i in tiny.split_indices("test"):
        vm, K, w, h = camera(tiny, i)
        out = render_panoptic(baked, vm, K, w, h, group=16)
        sem, ins, valid = gt_labels(tiny, i)
        agree = (out["semantic"] == sem) & (out["instance"] == ins)
        assert valid.mean() > 0.5
        assert agree[valid].mean() >= 0.95, agree[valid].mean()


def test_uplift_semantics_from_2d_labels(tiny):
    pm = gt_panoptic_mesh(tiny)
    g = init_from_mesh(pm, count=10_000, seed=1)
    g.opacity_logits[:] = 3.0
    truth = g.semantic.clone()
    g.semantic[:] = -1  # forget the labels; recover them from the GT semantic images of the train views
    views = []
    for i in tiny.split_indices("train")[::2]:
        vm, K, _, _ = camera(tiny, i)
        views.append((vm, K, tiny.gt_semantic(i)))
    n_cls = max(tiny.categories) + 1
    up, votes = uplift_semantics(g, views, n_cls)
    total = votes.sum(axis=1)
    # A Gaussian's total vote is its blending weight summed over all pixels. Gaussians hidden behind a
    # surface only get weight leaking through it, so they vote the occluder's class: judge the ones worth
    # at least one pixel, and the vote-weighted accuracy.
    visible = torch.from_numpy(total >= 1.0)
    assert visible.float().mean() > 0.25
    right = (up.semantic == truth).numpy()
    assert right[visible.numpy()].mean() > 0.93, right[visible.numpy()].mean()
    assert (total * right).sum() / total.sum() > 0.97
    # Gaussians nobody saw keep their (unknown) label.
    assert (up.semantic[torch.from_numpy(total < 1e-3)] == -1).all()
    # And the uplifted labels render the GT semantics of held-out views.
    for i in tiny.split_indices("test"):
        vm, K, w, h = camera(tiny, i)
        out = render_panoptic(up, vm, K, w, h, group=16)
        sem, _, valid = gt_labels(tiny, i)
        assert (out["semantic"] == sem)[valid].mean() >= 0.9
