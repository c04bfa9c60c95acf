"""rdiff plugin: the ``oct`` modality (retinal OCT B-scans).

Light on import: the simulator, the phantoms and the metrics load only when the modality is built.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = ("Retinal OCT B-scans (1 channel): seeded layered phantoms with vessel shadows; speckle, low signal, "
           "noise, depth fall-off, blur and A-scan motion; PSNR, SSIM and no-reference SNR, CNR, ENL; .npy volumes.")


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_oct.config import OctConfig

    register("oct", build=_build, config=OctConfig, summary=SUMMARY)


def _build(config):
    from rdiff_oct.modality import Oct

    return Oct(config)
