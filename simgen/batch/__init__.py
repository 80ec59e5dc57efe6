"""``simgen batch``: many scans into many worlds, one Ray task per scene stage (docs/cluster.md).

:func:`load_manifest` reads and checks the manifest (YAML or JSON); :func:`run_batch` runs it on an
embedded Ray instance or a cluster, skipping stages whose completion records say done, and writes
``OUT/batch.json`` / ``OUT/batch.md``. Ray is imported only when a batch runs (``pip install
'simgen[batch]'``).
"""

from simgen.batch.driver import BatchConfig, BatchError, BatchResult, run_batch
from simgen.batch.manifest import DEFAULT_STAGES, STAGES, Manifest, ManifestError, ScenePlan, load_manifest

__all__ = [
    "DEFAULT_STAGES",
    "STAGES",
    "BatchConfig",
    "BatchError",
    "BatchResult",
    "Manifest",
    "ManifestError",
    "ScenePlan",
    "load_manifest",
    "run_batch",
]
