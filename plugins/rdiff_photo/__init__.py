"""rdiff plugin: the ``photo`` modality (natural RGB photographs shipped with scikit-image).

A non-medical domain, so backbones and adaptors are exercised on more than retinal images. Light on
import: scikit-image, the simulator and the metrics load only when the modality is built.
"""

from __future__ import annotations

from rdiff import hookimpl
from rdiff.plugins import declarations


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_photo.config import PhotoConfig

    register("photo", build=_build, config=PhotoConfig, **declarations(__name__)["modalities"]["photo"])


def _build(config):
    from rdiff_photo.modality import Photo

    return Photo(config)
