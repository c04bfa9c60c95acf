"""rdiff plugin: the ``oct`` modality (retinal OCT B-scans).

Light on import: the simulator, the phantoms and the metrics load only when the modality is built.
"""

from __future__ import annotations

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_oct.config import OctConfig

    register("oct", build=_build, config=OctConfig, **declarations(__name__)["modalities"]["oct"])


def _build(config):
    from rdiff_oct.modality import Oct

    return Oct(config)
