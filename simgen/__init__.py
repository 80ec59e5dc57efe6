"""simgen: scanned indoor scenes -> panoptic reconstructions -> simulator worlds and cameras.

Pipeline, one subpackage per stage: ``data`` (scene format, synthetic scenes, importers) ->
``build`` (reconstruction) -> ``export`` (Gazebo / MuJoCo worlds) -> ``serve`` (render server)
-> ``eval`` (metrics).
"""

__version__ = "0.1.0"
