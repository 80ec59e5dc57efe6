"""Export a build (panoptic mesh + instances) to Gazebo (SDFormat) and MuJoCo (MJCF) worlds.

Entry point: :func:`simgen.export.pipeline.run_export`; settings: :class:`simgen.export.config.ExportConfig`;
validation of an export folder: :func:`simgen.export.check.check_export`. See docs/export.md.
"""
