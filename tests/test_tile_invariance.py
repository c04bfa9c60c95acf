"""Enhancement must not depend on how the image is cut: tiled and whole-image results agree inside the roi.

The tiny presets normalise without spatial statistics (ChannelNorm), so a tile of a photograph is computed
exactly as the same pixels seen whole, up to the networks' reach, which the default overlap covers; the
sampling path runs on one whole latent with each network tiled on its own, so its steps cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rdiff
from rdiff.enhance import enhance_image

LIMIT = 2 / 255


def photograph(size: int) -> np.ndarray:
    from skimage import data, transform

    return transform.resize(data.retina(), (size, size), anti_aliasing=True).astype(np.float32)


def trained_like(name: str) -> rdiff.Reconstructor:
    """The shipped weights where they exist; otherwise the tiny preset with every zero-initialised
    convolution given weights (as training would), so no branch is trivially silent."""
    if name == "ldm-unet":
        return rdiff.create_backbone(name, preset="tiny", pretrained="fundus").eval()
    torch.manual_seed(0)
    backbone = rdiff.create_backbone(name, preset="tiny")
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.Conv2d) and not module.weight.any():
                module.weight.normal_(0.0, 0.02)
    return backbone.eval()


CASES = [("cnn-ae", "fast", 1.0), ("ldm-unet", "fast", 1.0), ("dit", "fast", 1.0),
         ("ldm-unet", "sample", 0.0), ("ldm-unet", "sample", 1.0), ("dit", "sample", 1.0)]


@pytest.mark.parametrize("name, path, eta", CASES)
def test_tiled_equals_whole_inside_the_roi(name, path, eta):
    backbone, modality = trained_like(name), rdiff.create_modality("fundus")
    image = photograph(320)
    roi = modality.roi(image)
    options = dict(path=path, steps=2, eta=eta, seed=7)  # the backbone's default overlap
    whole = enhance_image(backbone, modality, image, roi=roi, tile=1024, **options)
    tiled = enhance_image(backbone, modality, image, roi=roi, tile=256, **options)
    difference = np.abs(tiled - whole)[roi]
    assert difference.max() <= LIMIT, f"{name} {path}: tiles differ by up to {difference.max() * 255:.1f}/255"


def test_tiles_are_spread_evenly_and_few():
    from rdiff.enhance import _plan_axis

    for length, tile, overlap in [(2048, 1024, 96), (1411, 1024, 96), (512, 1024, 96), (768, 128, 32)]:
        axis = _plan_axis(length, tile, overlap, 16)
        ends = [start + axis.size for start in axis.starts]
        assert axis.starts[0] == 0 and ends[-1] == axis.padded and axis.size <= max(tile, axis.padded)
        shared = [ends[i] - axis.starts[i + 1] for i in range(len(axis.starts) - 1)]
        assert all(s >= overlap for s in shared)  # neighbours always share at least the overlap
        assert all(s <= overlap + 2 * 16 for s in shared)  # and not much more: the grid's rounding only
        # never more pixels than one extra overlap per cut, plus rounding to the size multiple
        assert axis.size * len(axis.starts) <= axis.padded + len(shared) * (overlap + 2 * 16) + 16


@pytest.mark.parametrize("name", ["ldm-unet", "dit"])
def test_an_adapted_backbone_tiles_like_the_whole_image(name):
    """With the residual adaptor attached (its image-wide colour field included), every layer given
    weights, tiles still agree with the whole image: the field is computed once, over the whole image."""
    backbone, modality = trained_like(name), rdiff.create_modality("fundus")
    adaptor = rdiff.create_adaptor("residual", backbone)
    assert any(t.group == "image" for t in backbone.adaptation_targets())
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in adaptor.trainable_parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    image = photograph(320)
    roi = modality.roi(image)
    base = enhance_image(backbone, modality, image, roi=roi, tile=1024, path="fast")
    with adaptor.disabled():
        unadapted = enhance_image(backbone, modality, image, roi=roi, tile=1024, path="fast")
    assert np.abs(base - unadapted)[roi].max() > 4 / 255  # the adaptor does change the image
    tiled = enhance_image(backbone, modality, image, roi=roi, tile=256, path="fast")
    difference = np.abs(tiled - base)[roi]
    assert difference.max() <= LIMIT, f"{name} adapted: tiles differ by up to {difference.max() * 255:.1f}/255"
