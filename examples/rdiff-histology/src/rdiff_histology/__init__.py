"""rdiff plugin: the ``histology`` modality (stained tissue slides, e.g. H&E or immunohistochemistry).

This module is what the ``rdiff`` entry point names, so rdiff imports it at start-up: it stays light (no
numpy, no torch). The modality and its dependencies load only when ``build`` is called.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = ("Stained tissue slides (RGB): embedded immunohistochemistry sample from scikit-image; stain variation, "
           "defocus, sensor noise and JPEG; PSNR, SSIM and stain-density error.")


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_histology.config import HistologyConfig

    register("histology", build=_build, config=HistologyConfig, summary=SUMMARY)


def _build(config):
    from rdiff_histology.modality import Histology

    return Histology(config)
