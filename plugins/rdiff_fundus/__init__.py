"""rdiff's fundus modality: colour photographs of the retina.

Registers the modality ``fundus``. This module stays light (no numpy, no torch at import): the modality
and its heavy dependencies load only when it is built.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = ("Colour fundus photographs: FOV mask robust to clipped fields, cofe-Net and corrected "
           "degradations inside the FOV, PSNR/SSIM and vessel Dice; embedded sample skimage.data.retina().")


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_fundus.config import FundusConfig

    register("fundus", build=_build, config=FundusConfig, summary=SUMMARY)


def _build(config):
    from rdiff_fundus.modality import Fundus

    return Fundus(config)
