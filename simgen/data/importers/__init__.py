"""Importers from public RGB-D dataset layouts into the scene format (``simgen import``).

* :mod:`simgen.data.importers.replica`: Semantic-NeRF's Replica renders.
* :mod:`simgen.data.importers.scannet`: a ScanNet scene exported by its SensReader.
* :mod:`simgen.data.importers.rosbag`: a ROS 2 bag of an RGB-D camera with TF (unlabelled scene;
  :mod:`.rosbag_tf` the TF tree, :mod:`.rosbag_camera` CameraInfo, undistortion, registration).
* :mod:`simgen.data.importers.coco`: reading user-given 2D panoptic predictions (COCO panoptic).
* :mod:`simgen.data.importers.common`: the shared pipeline (frame selection, label conversion,
  per-frame id scrambling, writing).

See docs/importers.md.
"""

from simgen.data.importers.common import DatasetImportError, ImportConfig, ImportReport

__all__ = ["DatasetImportError", "ImportConfig", "ImportReport"]
