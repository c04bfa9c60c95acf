"""Enhancement at native resolution: tiles without seams, an untouched background, bounded memory, files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rdiff
from rdiff import images
from rdiff.enhance import enhance_files, enhance_image
from rdiff.modality import Modality

TILE, OVERLAP = 64, 16
TILE_STARTS = (0, 48, 96, 144, 192, 236)  # how a 300-pixel side is cut by 64-pixel tiles overlapping 16


class SmoothingBackbone(rdiff.Reconstructor):
    """A stand-in backbone: a fixed 3×3 box filter (zero-padded, like real networks) as the ``fast`` path,
    and a ``sample`` path that paints the initial noise it was given, so tests can see which noise each
    tile got. Records every batch it is asked to enhance."""

    capabilities = frozenset({"latent", "sampling"})
    stages = ("autoencoder",)
    size_multiple = 4

    def __init__(self, channels: int = 3):
        super().__init__(None, channels)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        nn.init.constant_(self.smooth.weight, 1 / 9)
        self.batches: list[torch.Tensor] = []
        self.noises: list[torch.Tensor] = []

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return 2, height // 4, width // 4

    def enhance(self, lq, *, path="fast", options=None, generator=None, noise=None):
        self.batches.append(lq.detach().clone())
        if path == "fast":
            return self.smooth(lq).clamp(0, 1)
        self.noises.append(noise.detach().clone())
        painted = noise[:, :1].repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
        return (0.5 * lq + 0.5 * torch.sigmoid(painted)).clamp(0, 1)

    # What a backbone must also provide; the tests here never train.
    def stage_parameters(self, stage):
        return list(self.parameters())

    def reconstruction_loss(self, stage, clean, roi, degraded=None):
        return F.l1_loss(self.smooth(clean), clean)

    def adaptation_targets(self):
        return []

    def adaptation_loss(self, lq, hq, roi):
        return F.l1_loss(self.smooth(lq), hq)

    def networks(self):
        return {"smooth": self.smooth}

    @property
    def tiles_seen(self) -> int:
        return sum(len(b) for b in self.batches)


class ColourShiftBackbone(SmoothingBackbone):
    """Enhances contrast and, like many generative models, tints the result (more red, less blue)."""

    def enhance(self, lq, *, path="fast", options=None, generator=None, noise=None):
        out = (lq - 0.5) * 1.3 + 0.5
        return (out + torch.tensor([0.08, 0.0, -0.08]).view(1, 3, 1, 1)).clamp(0, 1)


class PlainModality(Modality):
    """A stand-in modality whose region of interest is the whole image."""

    name = "plain"

    def degrade(self, image, roi, rng):
        return image.copy(), {}

    def sample_images(self, split):
        return []


class FundusLikeModality(PlainModality):
    """Stand-in for the fundus modality when it is not installed: the roi is where the image is not black,
    and enhancement works on the roi's bounding box padded to a square, as for fundus photographs."""

    name = "fundus-like"

    def roi(self, image):
        return image.max(axis=2) > 0.04

    def preprocess(self, image, roi):
        rows, cols = np.flatnonzero(roi.any(axis=1)), np.flatnonzero(roi.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        side = max(bottom - top, right - left)
        work = np.zeros((side, side, image.shape[2]), np.float32)
        work_roi = np.zeros((side, side), bool)
        work[:bottom - top, :right - left] = image[top:bottom, left:right]
        work_roi[:bottom - top, :right - left] = roi[top:bottom, left:right]

        def back(result):
            out = image.copy()
            out[top:bottom, left:right] = result[:bottom - top, :right - left]
            return out

        return work, work_roi, back


@pytest.fixture
def fundus() -> Modality:
    """The real fundus modality when installed, else the stand-in."""
    return rdiff.create_modality("fundus") if "fundus" in rdiff.list_modalities() else FundusLikeModality()


def smooth_image(height: int, width: int) -> np.ndarray:
    """Linear ramps with a different slope per channel: every pixel step is the same size."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [0.1 + 0.5 * x / width + 0.3 * y / height, 0.2 + 0.4 * y / height, 0.7 - 0.4 * x / width]
    return np.stack(channels, axis=2).astype(np.float32)


def fundus_like(height: int, width: int, radius: float) -> np.ndarray:
    """A bright textured disc (the field of view) on black."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = (y - height / 2) ** 2 + (x - width / 2) ** 2 < radius ** 2
    texture = 0.5 + 0.2 * np.sin(x / 7.0)[..., None] * np.array([1.0, 0.6, 0.3]) + 0.1 * np.cos(y / 11.0)[..., None]
    return np.where(inside[..., None], texture * np.array([0.9, 0.55, 0.3]) + 0.1, 0.0).astype(np.float32)


def mean_step(image: np.ndarray, axis: int, positions: list[int]) -> float:
    """Mean absolute difference between pixel ``p`` and ``p - 1`` along ``axis`` at the given positions."""
    step = np.abs(np.diff(image, axis=axis))  # step[p - 1] is the step into pixel p
    return float(np.take(step, [p - 1 for p in positions], axis=axis).mean())


def test_tiles_blend_without_seams():
    image = smooth_image(300, 300)
    out = enhance_image(SmoothingBackbone(), PlainModality(), image, tile=TILE, overlap=OVERLAP)
    assert out.shape == image.shape and out.dtype == np.float32

    borders = sorted({p for s in TILE_STARTS for p in (s, s + TILE) if 0 < p < 300})
    others = [p for p in range(3, 297) if p not in borders]  # the image's own edges are not tile seams
    for axis in (0, 1):
        across, elsewhere = mean_step(out, axis, borders), mean_step(out, axis, others)
        assert abs(across - elsewhere) <= 0.1 * elsewhere, (axis, across, elsewhere)


def test_tiled_output_matches_one_pass_for_a_local_network():
    image = fundus_like(300, 300, radius=140) + smooth_image(300, 300) * 0.2
    tiled = enhance_image(SmoothingBackbone(), PlainModality(), image, tile=TILE, overlap=OVERLAP)
    whole = enhance_image(SmoothingBackbone(), PlainModality(), image, tile=512)
    assert np.abs(tiled - whole)[2:-2, 2:-2].max() < 1e-5


def test_batches_of_tiles_give_the_same_result():
    image = smooth_image(300, 300)
    one, four = SmoothingBackbone(), SmoothingBackbone()
    a = enhance_image(one, PlainModality(), image, tile=TILE, overlap=OVERLAP, batch=1)
    b = enhance_image(four, PlainModality(), image, tile=TILE, overlap=OVERLAP, batch=4)
    assert len(one.batches) == 36 and len(four.batches) == 9 and four.tiles_seen == 36
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_background_is_untouched_and_empty_tiles_are_never_computed():
    rng = np.random.default_rng(0)
    image = rng.random((300, 300, 3), dtype=np.float32)  # a busy background makes bit-exactness meaningful
    y, x = np.mgrid[0:300, 0:300]
    roi = (y - 150) ** 2 + (x - 150) ** 2 < 70 ** 2
    backbone = SmoothingBackbone()
    out = enhance_image(backbone, PlainModality(), image, roi=roi, tile=TILE, overlap=OVERLAP)

    assert np.array_equal(out[~roi], image[~roi])
    assert not np.allclose(out[roi], image[roi])
    touching = sum(roi[ty:ty + TILE, tx:tx + TILE].any() for ty in TILE_STARTS for tx in TILE_STARTS)
    assert backbone.tiles_seen == touching < len(TILE_STARTS) ** 2


def test_fundus_background_stays_black(fundus):
    image = fundus_like(256, 320, radius=110)
    out = enhance_image(SmoothingBackbone(), fundus, image, tile=TILE, overlap=OVERLAP)
    roi = fundus.roi(image)
    assert out.shape == image.shape
    assert np.array_equal(out[~roi], image[~roi])
    black_surround = (image.max(axis=2) == 0) & ~roi
    assert black_surround.any() and (out[black_surround] == 0).all()
    assert np.abs(out[roi] - image[roi]).mean() > 1e-4  # and the inside was enhanced


def test_sampling_is_seeded_and_tiles_share_one_noise_field():
    image = smooth_image(300, 300)
    backbone = SmoothingBackbone()
    first = enhance_image(backbone, PlainModality(), image, path="sample", seed=3, tile=TILE, overlap=OVERLAP)
    again = enhance_image(SmoothingBackbone(), PlainModality(), image, path="sample", seed=3, tile=TILE,
                          overlap=OVERLAP)
    other = enhance_image(SmoothingBackbone(), PlainModality(), image, path="sample", seed=4, tile=TILE,
                          overlap=OVERLAP)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
    assert all(noise.shape == (1, 2, TILE // 4, TILE // 4) for noise in backbone.noises)
    assert not torch.equal(backbone.noises[0], backbone.noises[1])  # crops, not one tile's noise repeated

    # The sampler paints its noise: tiles agree where they overlap only if they got crops of one field,
    # and then the tiled result equals one pass over the whole image with the same seed.
    whole = enhance_image(SmoothingBackbone(), PlainModality(), image, path="sample", seed=3, tile=512)
    assert np.abs(first - whole).max() < 1e-5


def test_preserve_color_keeps_the_input_tint_and_the_enhanced_luminance():
    image = fundus_like(128, 128, radius=60)
    roi = image.max(axis=2) > 0
    luma = np.array([0.299, 0.587, 0.114], np.float32)

    def chroma(im):
        y = im @ luma
        return np.stack([im[..., 2] - y, im[..., 0] - y], axis=-1)[roi].mean(axis=0)

    tinted = enhance_image(ColourShiftBackbone(), PlainModality(), image, roi=roi, tile=512)
    kept = enhance_image(ColourShiftBackbone(), PlainModality(), image, roi=roi, tile=512, preserve_color=True)
    assert np.abs(chroma(tinted) - chroma(image)).max() > 0.05
    assert np.abs(chroma(kept) - chroma(image)).max() < 0.01
    assert np.abs((kept @ luma)[roi] - (tinted @ luma)[roi]).mean() < 0.01
    assert np.array_equal(kept[~roi], image[~roi])


def test_float16_on_cpu_falls_back_to_float32_with_a_warning():
    image = smooth_image(64, 64)
    with pytest.warns(UserWarning, match="float16"):
        half = enhance_image(SmoothingBackbone(), PlainModality(), image, dtype="float16")
    np.testing.assert_array_equal(half, enhance_image(SmoothingBackbone(), PlainModality(), image))


def test_bad_options_name_the_value():
    image = smooth_image(64, 64)
    with pytest.raises(rdiff.UserError, match="'ddpm'"):
        enhance_image(SmoothingBackbone(), PlainModality(), image, path="ddpm")
    with pytest.raises(rdiff.UserError, match="overlap 64"):
        enhance_image(SmoothingBackbone(), PlainModality(), image, tile=64, overlap=64)
    with pytest.raises(rdiff.UserError, match="'float8'"):
        enhance_image(SmoothingBackbone(), PlainModality(), image, dtype="float8")


def _run(modality: Modality) -> SimpleNamespace:
    backbone = SmoothingBackbone()
    return SimpleNamespace(backbone=backbone, modality=modality, tile=TILE, overlap=backbone.tile_overlap,
                           resolve_path=lambda path, **settings: backbone.resolve_path(path or "fast", **settings))


def _write_png48(path: Path, image: np.ndarray) -> None:
    """A 16-bit RGB PNG written byte by byte, so the input is surely 48-bit whatever the image libraries do."""
    data = np.round(image * 65535).astype(">u2")
    height, width = data.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in data.reshape(height, -1))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _read_raw(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        import tifffile

        return tifffile.imread(path)
    import png  # pypng: Pillow (and imageio through it) would read a 16-bit RGB PNG as 8 bit

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    data = np.vstack([np.asarray(row) for row in rows]).astype(np.uint16 if info["bitdepth"] == 16 else np.uint8)
    return data.reshape(height, width, -1).squeeze()


@pytest.mark.parametrize("deep_suffix", [
    ".png",
    ".tif",
])
def test_enhance_files_keeps_formats_and_skips_unreadable_files(tmp_path, fundus, capsys, deep_suffix):
    source = tmp_path / "in"
    image = fundus_like(96, 128, radius=44)
    images.write_image(source / "good.png", image, bits=8)
    deep = source / "sub" / f"deep{deep_suffix}"
    if deep_suffix == ".png":
        _write_png48(deep, image)
    else:
        images.write_image(deep, image, bits=16)
    (source / "broken.png").write_bytes(b"this is not a PNG file")

    code = enhance_files(_run(fundus), [str(source)], tmp_path / "out", compare=True)

    printed = capsys.readouterr()
    assert "broken.png" in printed.err and "1 failed" in printed.err
    assert code == 2
    good, deep_out = _read_raw(tmp_path / "out" / "good.png"), _read_raw(tmp_path / "out" / "sub" / deep.name)
    assert good.shape == deep_out.shape == (96, 128, 3)
    assert good.dtype == np.uint8 and deep_out.dtype == np.uint16
    assert _read_raw(tmp_path / "out" / "good_compare.png").shape[1] > 2 * 128
    assert not (tmp_path / "out" / "broken.png").exists()


def test_enhance_files_globs_suffixes_and_missing_inputs(tmp_path, capsys):
    images.write_image(tmp_path / "a.png", smooth_image(40, 48))
    run = _run(PlainModality())
    assert enhance_files(run, [str(tmp_path / "*.png")], tmp_path / "out", suffix="_enh") == 0
    assert images.read_image(tmp_path / "out" / "a_enh.png").shape == (40, 48, 3)
    assert "a.png" in capsys.readouterr().out
    with pytest.raises(rdiff.UserError, match="nowhere.png"):
        enhance_files(run, [str(tmp_path / "nowhere.png")], tmp_path / "out")
    with pytest.raises(rdiff.UserError, match="overwrite"):
        enhance_files(run, [str(tmp_path / "a.png")], tmp_path)


def test_written_images_are_readable_by_others_as_a_plainly_created_file_is(tmp_path):
    # atomic writes go through a temporary file, which tempfile makes private (0600)
    old = os.umask(0o022)
    try:
        path = images.write_image(tmp_path / "out" / "a.png", smooth_image(8, 8))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


LARGE_IMAGE_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import rdiff
    from rdiff.enhance import enhance_image

    backbone = rdiff.create_backbone("ldm-unet", preset="tiny")
    modality = rdiff.create_modality(sys.argv[1])
    y, x = np.mgrid[0:2048, 0:2048].astype(np.float32)
    disc = ((y - 1024) ** 2 + (x - 1024) ** 2 < 1000 ** 2)[..., None]
    image = np.where(disc, 0.4 + 0.2 * np.sin(x / 9)[..., None] * np.array([1.0, 0.5, 0.2]), 0.0)
    image = image.astype(np.float32)
    began = time.perf_counter()
    out = enhance_image(backbone, modality, image, path="fast", tile=256, overlap=32, batch=2)
    seconds = time.perf_counter() - began
    print(json.dumps({"shape": list(out.shape), "seconds": seconds,
                      "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


@pytest.mark.slow
@pytest.mark.skipif("ldm-unet" not in rdiff.list_backbones(), reason="the ldm-unet backbone is not installed")
def test_a_2048_pixel_photograph_enhances_in_bounded_memory():
    modality = "fundus" if "fundus" in rdiff.list_modalities() else "photo"
    if modality not in rdiff.list_modalities():
        pytest.skip("no three-channel modality is installed")
    child = subprocess.run([sys.executable, "-c", LARGE_IMAGE_SCRIPT, modality], capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2048, 2048, 3]
    assert result["peak_bytes"] < 4 * 2 ** 30, result
