"""``rdiff bench`` on the toy plugin: every method in results.json, a failing cell reported while the others
finish, the cache (and ``--force``), the tables and plots, and the figures over seeds."""

from __future__ import annotations

import argparse
import json
import math

import pytest

import rdiff
from rdiff import hookimpl
from rdiff_bench.bench import _engine_class, make_row, mean_std, summarise
from rdiff_bench.command import add_parser

REQUIRED = {"backbone", "modality", "adaptor", "preset", "method", "path", "psnr", "ssim", "trainable_params",
            "total_params", "steps", "time_s", "seeds"}
SMALL = ["--modalities", "toy", "--adaptors", "toy-adaptor", "--seeds", "2", "--crops", "4", "--pairs-counts", "1,2",
         "--reconstruct-steps", "2", "--adapt-steps", "2", "--batch-size", "2"]


# --- a backbone that fails in phase 1, registered by this module (listed in RDIFF_PLUGINS) -----------------------
@hookimpl
def rdiff_register_backbones(register):
    from toy_plugin import TOY_PRESETS, ToyConfig

    register("toy-broken", build=_broken, config=ToyConfig, summary="fails in phase 1", capabilities=("latent",),
             presets=TOY_PRESETS)
    register("toy-sampling", build=_sampling, config=ToyConfig, summary="the toy with a noisy 'sample' path",
             capabilities=("latent", "sampling"), presets=TOY_PRESETS)


def _broken(config, channels):
    from toy_components import ToyBackbone

    class Broken(ToyBackbone):
        def reconstruction_loss(self, stage, clean, roi, degraded=None):
            raise RuntimeError("exploded on purpose")

    return Broken(config, channels)


def _sampling(config, channels):
    import torch
    from toy_components import ToyBackbone

    class Sampling(ToyBackbone):
        capabilities = frozenset({"latent", "sampling"})

        def enhance(self, lq, *, path="fast", options=None, generator=None, noise=None):
            out = super().enhance(lq)
            if path == "fast":
                return out
            jitter = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            return (out + 0.05 * jitter).clamp(0, 1)

    return Sampling(config, channels)


def bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv])
    return args.handler(args)


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory):
    """One small bench of the toy backbone and the failing one, run once for the tests of this module."""
    from rdiff import plugins

    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
        mp.setenv("RDIFF_PLUGINS", f"toy_plugin,{__name__}")
        plugins.reset()
        code = bench("--backbones", "toy,toy-broken", *SMALL, "--out", str(out))
        yield out, code, mp
        plugins.reset()


@pytest.mark.slow
def test_rows_have_every_key_and_every_method(toy_bench):
    out, _, _ = toy_bench
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(REQUIRED <= set(row) for row in rows)
    toy = [r for r in rows if r["backbone"] == "toy"]
    assert {r["method"] for r in toy} == {"input", "clahe", "reconstruct-only", "scratch", "adapted"}
    for method in ("scratch", "adapted"):
        assert sorted(r["pairs"] for r in toy if r["method"] == method) == [1, 2]
    assert all(r["error"] is None and r["seeds"] == [0, 1] and r["psnr"] is not None for r in toy)
    adapted = next(r for r in toy if r["method"] == "adapted" and r["pairs"] == 2)
    assert adapted["path"] == "fast" and adapted["steps"] == 2
    assert 0 < adapted["trainable_params"] < adapted["total_params"]
    scratch = next(r for r in toy if r["method"] == "scratch" and r["pairs"] == 2)
    assert scratch["trainable_params"] == scratch["total_params"] > 0  # every parameter, from random init
    assert "illumination" in adapted["by_type"]  # the largest pairs count is broken down by degradation type


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_finish(toy_bench):
    out, code, _ = toy_bench
    assert code == 1
    rows = json.loads((out / "results.json").read_text())["rows"]
    broken = {r["method"]: r for r in rows if r["backbone"] == "toy-broken"}
    assert "exploded on purpose" in broken["reconstruct-only"]["error"] and broken["reconstruct-only"]["psnr"] is None
    assert broken["adapted"]["error"].startswith("phase 1 failed: ") and broken["adapted"]["seeds"] == []
    assert broken["input"]["error"] is None  # what needs no backbone still has its figures
    assert "exploded on purpose" in (out / "results.md").read_text()


@pytest.mark.slow
def test_tables_and_plots_are_written(toy_bench):
    out, _, _ = toy_bench
    table = (out / "results.md").read_text()
    assert "| toy | toy-adaptor | adapted | fast | 2 |" in table and "by degradation type" in table
    for name in ("convergence.png", "pairs.png", "grid-toy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.slow
def test_figures_are_mean_and_sample_std_over_seeds(toy_bench):
    out, _, _ = toy_bench
    for row in json.loads((out / "results.json").read_text())["rows"]:
        if row["psnr"] is not None:
            values = row["per_seed"]["psnr"]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            assert row["psnr"] == pytest.approx(mean, abs=1e-4) and row["psnr_std"] == pytest.approx(std, abs=1e-4)


@pytest.mark.slow
def test_a_second_run_uses_the_cache_and_force_recomputes(toy_bench):
    from rdiff.engine import Engine

    out, _, mp = toy_bench
    runs = out / "runs"
    before = {p.name: p.stat().st_mtime_ns for p in runs.iterdir()}
    calls = []
    original = Engine.reconstruct
    mp.setattr(Engine, "reconstruct", lambda self: calls.append(self.run_dir) or original(self))
    assert bench("--backbones", "toy", *SMALL, "--out", str(out)) == 0
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in runs.iterdir()} == before
    assert bench("--backbones", "toy", *SMALL, "--out", str(out), "--force") == 0
    assert len(calls) == 2  # phase 1 again, once per seed
    assert sorted(p.name for p in runs.iterdir()) == sorted(before)  # the same runs, recomputed in place


def test_mean_and_std_of_a_hand_checkable_case():
    assert mean_std([20.0, 22.0]) == (21.0, round(math.sqrt(2), 4))
    assert mean_std([7.5]) == (7.5, 0.0)
    summary = summarise([{"psnr": 20.0, "ssim": 0.5, "by_type": {"blur": {"psnr": 18.0}}},
                         {"psnr": 24.0, "ssim": 0.7, "by_type": {"blur": {"psnr": 20.0}, "noise": {"psnr": 30.0}}}])
    assert summary["metrics"]["psnr"] == {"mean": 22.0, "std": round(math.sqrt(8), 4)}
    assert summary["metrics"]["ssim"]["mean"] == 0.6
    assert summary["by_type"]["blur"]["psnr"] == {"mean": 19.0, "std": round(math.sqrt(2), 4)}
    assert summary["by_type"]["noise"]["psnr"] == {"mean": 30.0, "std": 0.0}  # only the seed that had it
    row = make_row({"method": "adapted"}, [(0, {"paths": {"fast": {"psnr": 20.0, "ssim": 0.5}}}, None),
                                           (1, None, "RuntimeError: boom"),
                                           (2, {"paths": {"fast": {"psnr": 22.0, "ssim": 0.7}}}, None)],
                   "fast", lambda r: r["paths"].get("fast"))
    assert (row["psnr"], row["seeds"], row["error"]) == (21.0, [0, 2], "RuntimeError: boom")


def test_bad_flags_are_user_errors(toy):
    from rdiff.errors import UserError

    with pytest.raises(UserError, match="--pairs-counts takes positive"):
        bench("--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adaptor", "--pairs-counts", "0,5")
    with pytest.raises(UserError, match="--set seed=... is chosen by the bench"):
        bench("--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adaptor", "--set", "seed=3")
    with pytest.raises(UserError, match="unknown adaptor 'toy-adapter'"):  # before anything runs
        bench("--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adapter")


def test_preset_budget_keeps_the_presets_own_steps(toy):
    # `--reconstruct-steps preset` etc. run the preset's full schedule (the comparison that means most)
    from rdiff_bench.bench import plan, settings_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adaptor",
                              "--reconstruct-steps", "preset", "--adapt-steps", "preset", "--batch-size", "preset"])
    units = plan(settings_from_args(args))
    train = next(u for u in units if u.kind == "adapt").config.train
    assert (train.steps, train.adapt_steps, train.batch_size) == ({"autoencoder": 4}, 4, 4)
    args = parser.parse_args(["bench", "--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adaptor",
                              "--reconstruct-steps", "3"])
    train = next(u for u in plan(settings_from_args(args)) if u.kind == "reconstruct").config.train
    assert (train.steps, train.batch_size) == ({"autoencoder": 3}, 8)
    with pytest.raises(SystemExit):  # argparse: "expected a whole number or 'preset'"
        parser.parse_args(["bench", "--backbones", "toy", "--modalities", "toy", "--adapt-steps", "lots"])


def test_scratch_lr_changes_only_the_from_scratch_runs(toy):
    # the baseline gets its own learning rate; adaptation, phase 1 and the cache keys of both stay as they were
    from rdiff_bench.bench import plan, settings_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    common = ["bench", "--backbones", "toy", "--modalities", "toy", "--adaptors", "toy-adaptor", "--seeds", "1"]
    same = plan(settings_from_args(parser.parse_args(common)))
    units = plan(settings_from_args(parser.parse_args(common + ["--scratch-lr", "3e-3"])))
    lr = {u.kind: u.config.train.adapt_lr for u in units if u.kind in ("adapt", "scratch")}
    assert lr["scratch"] == 3e-3 and lr["adapt"] == next(u for u in same if u.kind == "adapt").config.train.adapt_lr
    changed = {u.kind for u, v in zip(same, units) if u.key != v.key}
    assert changed == {"scratch"}
    with pytest.raises(SystemExit):  # argparse, naming --scratch-lr: "expected a finite number above 0"
        parser.parse_args(common + ["--scratch-lr", "0"])


def test_clahe_keeps_the_input_outside_the_roi_and_its_shape():
    import numpy as np

    from rdiff_bench.bench import clahe

    rng = np.random.default_rng(0)
    image = (rng.random((32, 32, 3)) * 0.4).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[8:24, 8:24] = True
    out = clahe(image, roi)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.array_equal(out[~roi], image[~roi]) and not np.allclose(out[roi], image[roi])
    grey = clahe(image[..., :1])
    assert grey.shape == (32, 32, 1) and 0 <= grey.min() and grey.max() <= 1


def test_a_resumed_from_scratch_run_still_keeps_its_best_step(toy, tmp_path, monkeypatch):
    # the best step so far travels in the checkpoint: after a resume the kept model is not just the latest
    import rdiff.evaluation
    from test_engine import toy_config

    Engine = _engine_class()  # the engine with the bench's from-scratch baseline
    scores = iter([1.0, 5.0, 3.0])  # validations at steps 0, 2, 4 of the first run: the best is step 2
    monkeypatch.setattr(rdiff.evaluation, "validation_psnr", lambda *a, **k: next(scores))
    first = Engine(toy_config(tmp_path, train__adapt_steps=4, train__val_every=2, train__checkpoint_every=2), tmp_path)
    first.save_config()
    assert first.scratch()["best_step"] == 2

    scores = iter([2.0])  # the resumed run validates only step 6, worse than step 2
    resumed = Engine(toy_config(tmp_path, train__adapt_steps=6, train__val_every=2, train__checkpoint_every=2),
                     tmp_path, resume=True)
    assert resumed.scratch()["best_step"] == 2
    assert json.loads((tmp_path / "scratch" / "scratch.json").read_text())["best_step"] == 2


@pytest.mark.slow
def test_the_hallucination_report_is_next_to_psnr_for_a_sampling_backbone(tmp_path, monkeypatch, capsys):
    """Adapted rows of a backbone that samples carry structure invented / lost (and how much of it the
    uncertainty map flags) on the default sampling path only; without the uncertainty plugin the bench still
    runs, says so in one line and has no such columns; 1 sample cannot measure a spread."""
    from rdiff import plugins
    from rdiff.errors import UserError

    tiny = ["--backbones", "toy-sampling", "--modalities", "toy", "--adaptors", "toy-adaptor", "--seeds", "1",
            "--crops", "2", "--pairs-counts", "1", "--reconstruct-steps", "1", "--adapt-steps", "1",
            "--batch-size", "2"]
    monkeypatch.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RDIFF_PLUGINS", f"toy_plugin,{__name__},rdiff_uncertainty")
    plugins.reset()
    with pytest.raises(UserError, match="at least 2"):
        bench(*tiny, "--uncertainty-samples", "1", "--out", str(tmp_path / "one"))
    assert bench(*tiny, "--uncertainty-samples", "2", "--out", str(tmp_path / "on")) == 0
    rows = json.loads((tmp_path / "on" / "results.json").read_text())["rows"]
    adapted = {r["path"]: r for r in rows if r["method"] == "adapted"}
    assert set(adapted) == {"fast", "sample"}
    report = adapted["sample"]["hallucination"]
    assert (report["samples"], report["seeds"]) == (2, 1)
    for key in ("invented", "lost", "structure"):
        assert 0 <= report[key]["mean"] <= 1
    assert report["invented"]["mean"] + report["lost"]["mean"] > 0  # a noisy sampler changes some structure
    for key in ("invented_flagged", "lost_flagged"):
        assert report[key] is None or 0 <= report[key]["mean"] <= 1
    assert [r for r in rows if r.get("hallucination")] == [adapted["sample"]]  # that row only
    table = (tmp_path / "on" / "results.md").read_text()
    assert "| PSNR (dB) | SSIM | invented (flagged) | lost (flagged) |" in table
    line = next(l for l in table.splitlines() if l.startswith("| toy-sampling | toy-adaptor | adapted | sample |"))
    assert line.count("%") >= 2
    assert "high-uncertainty region" in table

    monkeypatch.setenv("RDIFF_PLUGINS", f"toy_plugin,{__name__}")  # the uncertainty plugin not loaded
    plugins.reset()
    capsys.readouterr()
    assert bench(*tiny, "--out", str(tmp_path / "off")) == 0
    printed = capsys.readouterr()
    said = [l for l in (printed.out + printed.err).splitlines() if "no hallucination report" in l]
    assert len(said) == 1 and "not loaded" in said[0]
    assert not any(r.get("hallucination") for r in json.loads((tmp_path / "off" / "results.json").read_text())["rows"])
    assert "invented (flagged)" not in (tmp_path / "off" / "results.md").read_text()
