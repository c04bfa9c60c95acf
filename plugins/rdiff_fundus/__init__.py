"""rdiff's fundus modality: colour photographs of the retina.

Registers the modality ``fundus``. This module stays light (no numpy, no torch at import): the modality
and its heavy dependencies load only when it is built.
"""

from __future__ import annotations

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_fundus.config import FundusConfig

    register("fundus", build=_build, config=FundusConfig, **declarations(__name__)["modalities"]["fundus"])


def _build(config):
    from rdiff_fundus.modality import Fundus

    return Fundus(config)
