"""The contract tests of the Modality role (see :mod:`rdiff.testing`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from rdiff.errors import UserError
from rdiff.modality import Modality



# --- modality ---------------------------------------------------------------------------------------------------


class ModalityContract:
    """Checks a :class:`rdiff.Modality`. Set ``modality`` (registered name) and optionally ``options``."""

    modality: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}  # modality_options
    image_size: ClassVar[int] = 32  # side of the crops the checks degrade and score
    seeds: ClassVar[tuple[int, ...]] = (0, 1, 2, 3)  # degradation seeds tried (default mixes are random)

    # -- helpers -------------------------------------------------------------------------------------------
    def make_modality(self) -> Modality:
        from rdiff.registry import create_modality

        return create_modality(self.modality, **self.options)

    @pytest.fixture
    def built(self) -> Modality:
        modality = self.make_modality()
        assert isinstance(modality, Modality), f"build must return an rdiff.Modality, got {type(modality).__name__}"
        return modality

    @pytest.fixture
    def crops(self, built: Modality) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(image, roi)`` crops of the embedded training images, as the engine cuts them."""
        from rdiff.data import load_items, random_crop

        items = load_items(built, None, "train", 128, self.image_size)
        rng = np.random.default_rng(0)
        out = []
        for k in range(4):
            item = items[k % len(items)]
            y, x = random_crop(rng, item.image, item.roi, self.image_size)
            s = (slice(y, y + self.image_size), slice(x, x + self.image_size))
            out.append((item.image[s].copy(), item.roi[s].copy()))
        return out

    # -- checks --------------------------------------------------------------------------------------------
    def test_declares_channels_and_file_types(self, built: Modality) -> None:
        assert isinstance(built.channels, int) and built.channels >= 1, "channels must be a positive int"
        assert built.suffixes and all(s.startswith(".") and s == s.lower() for s in built.suffixes), \
            "suffixes must be lower-case file suffixes such as '.png'"

    @pytest.mark.parametrize("split", ["train", "heldout"])
    def test_sample_images(self, built: Modality, split: str) -> None:
        images = built.sample_images(split)
        assert isinstance(images, list) and images, f"sample_images('{split}') must be a non-empty list"
        for i, image in enumerate(images):
            where = f"sample_images('{split}')[{i}]"
            assert isinstance(image, np.ndarray) and image.dtype == np.float32, f"{where} must be a float32 array"
            assert image.ndim == 3 and image.shape[2] == built.channels, \
                f"{where} must be H×W×{built.channels}, got {image.shape}"
            assert min(image.shape[:2]) >= self.image_size, f"{where} is smaller than {self.image_size} px"
            assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, f"{where} must lie in [0, 1]"
        again = built.sample_images(split)
        assert len(again) == len(images) and all(np.array_equal(a, b) for a, b in zip(images, again)), \
            f"sample_images('{split}') must return the same images every time (held-out scores depend on it)"

    def test_splits_are_disjoint(self, built: Modality) -> None:
        train, heldout = built.sample_images("train"), built.sample_images("heldout")
        for i, h in enumerate(heldout):
            assert not any(h.shape == t.shape and np.array_equal(h, t) for t in train), \
                f"held-out sample {i} is also a training sample"

    @pytest.mark.parametrize("split", ["train", "heldout"])
    def test_roi(self, built: Modality, split: str) -> None:
        image = built.sample_images(split)[0]
        roi = built.roi(image)
        assert isinstance(roi, np.ndarray) and roi.dtype == bool, "roi must be a bool array"
        assert roi.shape == image.shape[:2], f"roi must be H×W {image.shape[:2]}, got {roi.shape}"
        assert roi.any(), "the roi of an embedded sample is empty"

    def test_degrade_is_deterministic_per_seed(self, built: Modality, crops) -> None:
        for seed, (image, roi) in zip(self.seeds, crops):
            first, params = built.degrade(image, roi, np.random.default_rng(seed))
            second, params_again = built.degrade(image, roi, np.random.default_rng(seed))
            assert np.array_equal(first, second), f"degrade with seed {seed} gave two different images"
            assert json.dumps(params, sort_keys=True) == json.dumps(params_again, sort_keys=True), \
                f"degrade with seed {seed} gave two different parameter sets"
        image, roi = crops[0]
        by_seed = [built.degrade(image, roi, np.random.default_rng(seed))[0] for seed in self.seeds]
        assert any(not np.array_equal(by_seed[0], other) for other in by_seed[1:]), \
            "degrade gives the same image for every seed: it must draw its parameters from rng"

    def test_degrade_output_and_params(self, built: Modality, crops) -> None:
        changed = False
        for seed in self.seeds:
            for image, roi in crops[:2]:
                original = image.copy()
                out, params = built.degrade(image, roi, np.random.default_rng(seed))
                assert np.array_equal(image, original), "degrade modified its input image in place"
                assert isinstance(out, np.ndarray) and out.dtype == np.float32, "degrade must return float32"
                assert out.shape == image.shape, f"degrade changed the shape {image.shape} -> {out.shape}"
                assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, "degraded image outside [0, 1]"
                changed |= not np.array_equal(out, image)
                assert isinstance(params, dict), "degrade must return its parameters as a dict"
                json.dumps(params, allow_nan=False)  # logged to JSON: plain numbers, strings, lists, dicts
                types = params.get("types")
                assert isinstance(types, list) and types and all(isinstance(t, str) for t in types), \
                    "params must hold 'types', a non-empty list of degradation names (scores are broken down by it)"
        assert changed, "degrade never changed an image"

    def test_degrade_leaves_pixels_outside_the_roi_unchanged(self, built: Modality, crops) -> None:
        for seed in self.seeds:
            for image, roi in crops[:2]:
                part = roi.copy()
                part[:, : self.image_size // 3] = False  # a roi that certainly leaves pixels out
                out, _ = built.degrade(image, part, np.random.default_rng(seed))
                assert np.array_equal(out[~part], image[~part]), \
                    f"degrade (seed {seed}) changed pixels outside the roi"

    def test_metrics(self, built: Modality, crops) -> None:
        import torchmetrics

        from rdiff.data import to_tensor

        hq = torch.stack([to_tensor(image) for image, _ in crops[:2]])
        roi = torch.stack([to_tensor(r) for _, r in crops[:2]])
        lq = torch.stack([to_tensor(built.degrade(image, r, np.random.default_rng(1))[0]) for image, r in crops[:2]])
        identical = built.metrics()
        assert isinstance(identical, torchmetrics.MetricCollection), "metrics() must return a MetricCollection"
        assert {"psnr", "ssim"} <= set(identical.keys()), f"metrics() must include psnr and ssim, has {list(identical.keys())}"
        assert built.metrics() is not identical, "metrics() must return a fresh collection on every call"
        identical.update(hq, hq.clone(), roi)
        perfect = {k: float(v) for k, v in identical.compute().items()}
        assert perfect["psnr"] >= 60, f"identical images must score a (capped) perfect PSNR, got {perfect['psnr']}"
        assert perfect["ssim"] > 0.999, f"identical images must score SSIM 1, got {perfect['ssim']}"
        assert not any(np.isnan(v) for v in perfect.values()), f"a metric is NaN on identical images: {perfect}"
        degraded = built.metrics()
        degraded.update(lq, hq, roi)
        scores = {k: float(v) for k, v in degraded.compute().items()}
        assert all(np.isfinite(v) for v in scores.values()), f"metrics of degraded images must be finite: {scores}"
        assert scores["psnr"] < perfect["psnr"], "a degraded image must score a lower PSNR than the clean one"

    def test_png_round_trip(self, built: Modality, crops, tmp_path: Path) -> None:
        image = crops[0][0]
        written = built.write(tmp_path / "image.png", image)
        back = built.read(written)
        assert back.dtype == np.float32 and back.shape == image.shape, f"read gave {back.dtype} {back.shape}"
        assert np.abs(back - image).max() <= 0.5 / 255 + 1e-6, "a PNG written and read back differs by more than 8-bit rounding"
        stack = built.read_stack(built.write_stack(tmp_path / "stack.png", [image]))
        assert len(stack) == 1 and np.abs(stack[0] - image).max() <= 0.5 / 255 + 1e-6, \
            "write_stack/read_stack of one image must round-trip like write/read"
        with pytest.raises(UserError):
            built.read(tmp_path / "missing.png")

    def test_preprocess_maps_results_back(self, built: Modality) -> None:
        image = built.sample_images("heldout")[0]
        roi = built.roi(image)
        work, work_roi, to_original = built.preprocess(image, roi)
        assert work.ndim == 3 and work.shape[2] == built.channels and work_roi.shape == work.shape[:2], \
            "preprocess must return an H×W×C image and its H×W roi"
        assert np.asarray(to_original(work)).shape == image.shape, "preprocess's inverse must restore the input's shape"

    def test_feeds_the_engine(self, built: Modality) -> None:
        """The engine's own data path: embedded splits, held-out pairs degraded on the fly, batched and scored."""
        from rdiff.data import CleanCrops, degraded_crops, load_items, stack

        held = load_items(built, None, "heldout", 256, self.image_size)
        pairs = degraded_crops(built, held, self.image_size, 2, seed=1234)
        batch = stack(pairs)
        assert batch["lq"].shape == (2, built.channels, self.image_size, self.image_size)
        metrics = built.metrics()
        metrics.update(batch["lq"], batch["hq"], batch["roi"])
        assert all(np.isfinite(float(v)) for v in metrics.compute().values())
        train = load_items(built, None, "train", 256, self.image_size)
        item = CleanCrops(train, self.image_size, 2, seed=0, modality=built)[0]
        assert item["clean"].shape == item["degraded"].shape == (built.channels, self.image_size, self.image_size)
