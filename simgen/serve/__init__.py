"""The render server (``simgen serve``): RGB, depth and panoptic images of a build or export over HTTP.

Modules: :mod:`~simgen.serve.scene` (what is rendered, :func:`load_render_scene`), :mod:`~simgen.data.poses`
(camera pose conventions), :mod:`~simgen.serve.api` (request parsing, response encoding),
:mod:`~simgen.serve.app` (Flask app, :func:`create_app`), :mod:`~simgen.serve.openapi`,
:mod:`~simgen.serve.server` (waitress, worker processes), :mod:`~simgen.sim.gazebo` (the logic of the Gazebo
camera plugin in ``sensor_plugin/``), :mod:`~simgen.sim.world` (``simgen world``: Jackal-sized robot in an
exported world), :mod:`~simgen.sim.drive` (``simgen drive``: the MuJoCo stand-in loop). Client:
:mod:`simgen.serve.client`. See docs/serve.md.
"""
