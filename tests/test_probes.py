"""Probes of bad input, table-driven: configs, data, pairs, runs, weights, plugins and I/O faults.

Every case must end the way a user can act on: exit code 2, one sentence naming the culprit (key, value,
file or folder), no traceback, no existing file changed, and (for a new run) nothing written to --out.
Each case fails before any training step, so the whole table runs in seconds on the toy plugin.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rdiff.cli import main

TOY = ["--backbone", "toy", "--modality", "toy", "--adaptor", "toy-adaptor", "--preset", "tiny"]


# --- helpers -------------------------------------------------------------------------------------------------


def png(path: Path, height: int = 48, width: int = 48, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def folder(root: Path, names=("a", "b", "c"), size=(48, 48)) -> Path:
    for i, name in enumerate(names):
        png(root / f"{name}.png", *size, seed=i)
    return root


def pairs(root: Path, lq=("a", "b", "c"), hq=("a", "b", "c"), lq_size=(48, 48), hq_size=(48, 48)) -> Path:
    folder(root / "lq", lq, lq_size)
    folder(root / "hq", hq, hq_size)
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Ctx:
    """What a case's setup gets: a scratch folder (the working directory), a copy of a trained run
    (made on demand) and pytest's monkeypatch."""

    tmp: Path
    trained: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> str:
        return str(self.tmp / "out")

    def run(self) -> Path:
        copy = self.tmp / "run"
        if not copy.exists():
            shutil.copytree(self.trained, copy)
        return copy

    def train(self, *extra: str) -> list[str]:
        return ["train", *TOY, "--out", self.out, *extra]


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], list[str]]
    culprit: str  # formatted with tmp= the scratch folder
    fresh_out: bool = True  # a new run: --out must not exist afterwards
    unsaid: str = "checkpoint is kept"  # words that would mislead here (no checkpoint was ever written)


def _readonly(ctx: Ctx) -> None:
    from rdiff import images

    def refuse(path, suffix=""):  # as os.open fails on a read-only file system: naming the temporary file
        raise OSError(errno.EROFS, "Read-only file system", str(path.parent / f".{path.name}.0123456789ab{suffix}"))

    ctx.monkeypatch.setattr(images, "temp_beside", refuse)


def _disk_full(ctx: Ctx) -> None:
    import collections

    from rdiff import preflight

    usage = collections.namedtuple("usage", "total used free")
    ctx.monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 1 << 20))


def _checkpoint_write_fails(ctx: Ctx) -> None:
    from rdiff import checkpoints

    def full(tensors, filename, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    ctx.monkeypatch.setattr(checkpoints, "save_file", full)


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last tensor's last byte: the header still parses, the size is the same
    path.write_bytes(bytes(data))


AE = "reconstruct/autoencoder/model.safetensors"


def _enhance(ctx: Ctx, *extra: str) -> list[str]:
    return ["enhance", "--run", str(ctx.run()), str(png(ctx.tmp / "in" / "x.png")), "--out",
            str(ctx.tmp / "enhanced"), *extra]


def _with(action: Callable[[Ctx], None], argv: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        action(ctx)
        return argv(ctx)
    return setup


def _set(*items: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ctx.train(*[a for item in items for a in ("--set", item)])


def _with_tools(ctx: Ctx, argv: list[str]) -> list[str]:
    from rdiff import plugins

    ctx.monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,rdiff_degrade")
    plugins.reset()
    return argv


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _nan_backbone(ctx: Ctx) -> None:
    import toy_components

    ctx.monkeypatch.setattr(toy_components.ToyBackbone, "enhance", lambda self, lq, **kw: lq * float("nan"))


def _checkpoint_too_large(ctx: Ctx) -> None:
    from rdiff import checkpoints

    def too_large(*args, **kwargs):  # what safetensors raises when the file-size limit (ulimit -f) is reached
        raise Exception("Error while serializing: I/O error: File too large (os error 27)")  # noqa: TRY002

    ctx.monkeypatch.setattr(checkpoints, "save_file", too_large)


def _fsync_disk_full(ctx: Ctx) -> None:
    from rdiff import checkpoints

    def full(fd):  # as a write cut short by a full disk fails: an errno, no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr(checkpoints.os, "fsync", full)


def _impostor(ctx: Ctx, argv: list[str]) -> list[str]:
    """A third-party plugin that registers the built-in name 'cnn-ae' (the built-in not loaded), with keys of its own."""
    from rdiff import plugins

    (ctx.tmp / "lib").mkdir()
    (ctx.tmp / "lib" / "rdiff_impostor.py").write_text(
        "from dataclasses import dataclass\nfrom rdiff import hookimpl\n\n@dataclass\nclass Options:\n    x: int = 1\n\n"
        "@hookimpl\ndef rdiff_register_backbones(register):\n"
        "    register('cnn-ae', build=lambda config, channels: None, config=Options, presets={'tiny': {}})\n")
    ctx.monkeypatch.syspath_prepend(str(ctx.tmp / "lib"))
    ctx.monkeypatch.setenv("RDIFF_PLUGINS", "toy_plugin,rdiff_impostor")
    plugins.reset()
    return argv


CASES = [
    # --- configuration: counts, intervals, ranges, multiples ---------------------------------------------
    Case("adapt_steps negative", _set("train.adapt_steps=-1"), "'train.adapt_steps' must be at least 1, not -1"),
    Case("stage steps negative", _set("train.steps.autoencoder=-3"), "'train.steps.autoencoder' must be at least 1, not -3"),
    Case("stage steps zero", _set("train.steps.autoencoder=0"), "'train.steps.autoencoder' must be at least 1, not 0"),
    Case("batch_size zero", _set("train.batch_size=0"), "'train.batch_size' must be at least 1, not 0"),
    Case("adapt_batch_size zero", _set("train.adapt_batch_size=0"), "'train.adapt_batch_size' must be at least 1"),
    Case("image_size odd", _set("train.image_size=63"), "'train.image_size' must be a multiple of 2 for backbone 'toy'"),
    Case("image_size zero", _set("train.image_size=0"), "'train.image_size' must be at least 1, not 0"),
    Case("checkpoint_every zero", _set("train.checkpoint_every=0"), "'train.checkpoint_every' must be at least 1"),
    Case("log_every zero", _set("train.log_every=0"), "'train.log_every' must be at least 1"),
    Case("val_every zero", _set("train.val_every=0"), "'train.val_every' must be at least 1"),
    Case("grad_accum zero", _set("train.grad_accum=0"), "'train.grad_accum' must be at least 1"),
    Case("max_bad_steps zero", _set("train.max_bad_steps=0"), "'train.max_bad_steps' must be at least 1"),
    Case("pairs zero", _set("train.pairs=0"), "'train.pairs' must be at least 1"),
    Case("val_pairs zero", _set("train.val_pairs=0"), "'train.val_pairs' must be at least 1"),
    Case("num_workers negative", _set("train.num_workers=-1"), "'train.num_workers' must be at least 0"),
    Case("lr zero", _set("train.lr=0"), "'train.lr' must be a positive number"),
    Case("adapt_lr negative", _set("train.adapt_lr=-1e-4"), "'train.adapt_lr' must be a positive number"),
    Case("clip_grad negative", _set("train.clip_grad=-1"), "'train.clip_grad' must be 0 (off) or positive"),
    Case("ema_decay above 1", _set("train.ema_decay=1.5"), "'train.ema_decay' must be at least 0 and below 1"),
    Case("resize below crop", _set("train.resize=16"), "'train.resize' (16) is smaller than 'train.image_size' (32)"),
    Case("eval crops zero", _set("eval.crops=0"), "'eval.crops' must be at least 1"),
    Case("eval sample_steps zero", _set("eval.sample_steps=[0]"), "'eval.sample_steps' must hold step counts"),
    Case("eval eta negative", _set("eval.eta=-1"), "'eval.eta' must be 0 or positive"),
    Case("eval path unknown", _set("eval.path=ddim99"), "'eval.path' is 'ddim99', which backbone 'toy' does not offer"),
    Case("seed negative", _set("seed=-1"), "config key 'seed' must be at least 0, not -1"),  # --seed -1: argparse
    Case("stage misspelled", _set("train.steps={autoencoder: 4, autoencodr: 4}"), "'train.steps.autoencodr' is not a stage"),
    Case("unknown key", _set("train.adapt_stpes=1"), "unknown config key 'train.adapt_stpes'"),
    # --- data folders -------------------------------------------------------------------------------------
    Case("data image corrupt", lambda c: c.train("--data", str(_corrupt(folder(c.tmp / "data")))),
         "broken.png"),
    Case("data image too small", lambda c: c.train("--data", str(folder(c.tmp / "data", size=(20, 20)))),
         "a.png' is 20×20 px, smaller than the 32-px training crops"),
    Case("data folder empty", lambda c: c.train("--data", str(_mkdir(c.tmp / "data"))), "holds no images"),
    Case("data is a file", lambda c: c.train("--data", str(png(c.tmp / "one.png"))), "does not exist or is not a folder"),
    Case("data single image narrow", lambda c: c.train("--data", str(folder(c.tmp / "data", names=("a",), size=(40, 40)))),
         "is the only image and too narrow"),
    Case("data all unreadable, skipping", lambda c: c.train("--data", str(_only_broken(c.tmp / "data")), "--set",
                                                            "train.bad_images=skip"), "holds no readable images"),
    # --- pairs folders: found before phase 1 trains --------------------------------------------------------
    Case("pairs orphan", lambda c: c.train("--pairs", str(pairs(c.tmp / "p", lq=("a", "b", "c"), hq=("a", "b")))),
         "lq/c.png' has no partner with the stem 'c'"),
    Case("pairs without hq", lambda c: c.train("--pairs", str(_without_hq(c.tmp / "p"))), "p/hq' is missing"),
    Case("pairs sizes differ", lambda c: c.train("--pairs", str(pairs(c.tmp / "p", hq_size=(48, 40)))),
         "pairs must have the same size"),
    Case("pairs only one", lambda c: c.train("--pairs", str(pairs(c.tmp / "p", lq=("a",), hq=("a",)))), "holds 1 pair"),
    Case("pairs too small", lambda c: c.train("--pairs", str(pairs(c.tmp / "p", lq_size=(20, 20), hq_size=(20, 20)))),
         "is 20×20 px, smaller than the 32-px training crops"),
    Case("pairs unreadable", lambda c: c.train("--pairs", str(_corrupt_pair(c.tmp / "p"))), "cannot read image"),
    Case("pairs folder missing", lambda c: c.train("--pairs", str(c.tmp / "nowhere")), "nowhere' does not exist"),
    Case("reconstruct ignores pairs? no: adapt --from checks them", lambda c: [
        "adapt", "--from", str(c.run()), "--out", c.out, "--pairs", str(pairs(c.tmp / "p", hq=("a", "b", "x")))],
        "has no partner"),
    # --- the output folder --------------------------------------------------------------------------------
    Case("out is a file", lambda c: ["train", *TOY, "--out", str(png(c.tmp / "taken.png"))], "is a file, not a folder",
         fresh_out=False),
    Case("out below a file", lambda c: ["train", *TOY, "--out", str(png(c.tmp / "taken.png") / "run")],
         "cannot be created", fresh_out=False),
    Case("out read-only", _with(_readonly, lambda c: c.train()), "is not writable"),
    Case("out disk full", _with(_disk_full, lambda c: c.train()), "MB free, but this run writes about"),
    Case("checkpoint write fails", _with(_checkpoint_write_fails, lambda c: c.train()), "the disk is full (ENOSPC)",
         fresh_out=False),
    # --- runs and --resume ----------------------------------------------------------------------------------
    Case("existing run", lambda c: ["train", *TOY, "--out", str(c.run())], "already holds a run; pass --resume",
         fresh_out=False),
    Case("resume changes crop size", lambda c: ["train", "--out", str(c.run()), "--resume", "--set",
                                                 "train.image_size=16"], "--resume cannot change train.image_size",
         fresh_out=False),
    Case("resume changes model", lambda c: ["train", "--out", str(c.run()), "--resume", "--set", "model.width=4",
                                            "--seed", "3"], "--resume cannot change model.width, seed", fresh_out=False),
    Case("resume finished stage steps", lambda c: ["train", "--out", str(c.run()), "--resume", "--set",
                                                   "train.steps.autoencoder=9"],
         "train.steps.autoencoder (stage 'autoencoder' has finished)", fresh_out=False),
    Case("resume bad override value", lambda c: ["train", "--out", str(c.run()), "--resume", "--set",
                                                 "train.adapt_steps=-2"], "'train.adapt_steps' must be at least 1",
         fresh_out=False),
    Case("resume bad pairs", lambda c: ["train", "--out", str(c.run()), "--resume", "--pairs",
                                        str(pairs(c.tmp / "p", lq=("a", "q"), hq=("a", "b")))], "has no partner",
         fresh_out=False),
    Case("resume not a run", lambda c: ["train", "--out", str(_mkdir(c.tmp / "empty")), "--resume"],
         "--resume needs --out pointing at an existing run directory", fresh_out=False),
    # --- weights ----------------------------------------------------------------------------------------------
    Case("adaptor deleted", lambda c: _enhance(c) if _rm(c.run() / "adapt" / "adaptor.safetensors") else [],
         "adaptor file '{tmp}/run/adapt/adaptor.safetensors' is missing", fresh_out=False),
    Case("adaptor folder deleted", lambda c: _enhance(c) if _rm(c.run() / "adapt") else [],
         "adaptor.safetensors' is missing", fresh_out=False),
    Case("adaptor truncated", lambda c: _enhance(c) if _truncate(c.run() / "adapt" / "adaptor.safetensors") is None else [],
         "adapt/adaptor.safetensors' is damaged", fresh_out=False),
    Case("autoencoder truncated", lambda c: _enhance(c) if _truncate(c.run() / AE) is None else [],
         f"{AE}' is damaged", fresh_out=False),
    Case("autoencoder bit flip", lambda c: _enhance(c) if _flip_a_byte(c.run() / AE) is None else [],
         "does not match the checksum", fresh_out=False),
    Case("adaptor truncated, no manifest",
         lambda c: _enhance(c) if (_rm(c.run() / "manifest.json"), _truncate(c.run() / "adapt" / "adaptor.safetensors")) else [],
         "adaptor file '{tmp}/run/adapt/adaptor.safetensors' is damaged", fresh_out=False),
    Case("evaluate without adaptor", lambda c: ["evaluate", "--run", str(c.run())]
         if _rm(c.run() / "adapt" / "adaptor.safetensors") else [], "adaptor.safetensors' is missing", fresh_out=False),
    Case("adapt from damaged phase 1", lambda c: ["adapt", "--from", str(c.run()), "--out", c.out]
         if _truncate(c.run() / AE) is None else [], f"{AE}' is damaged", fresh_out=True),
    Case("enhance over its input", lambda c: ["enhance", "--run", str(c.run()), str(png(c.tmp / "in" / "x.png")),
                                              "--out", str(c.tmp / "in")], "(--suffix)", fresh_out=False),
    # --- plugins ---------------------------------------------------------------------------------------------
    Case("unknown backbone", lambda c: ["train", "--backbone", "nope", "--modality", "toy", "--out", c.out],
         "unknown backbone 'nope'"),
    Case("unknown adaptor", lambda c: c.train("--adaptor", "nope"), "unknown adaptor 'nope'"),
    # --- I/O while enhancing: the file is named and skipped -----------------------------------------------------
    Case("enhance read-only output", _with(_readonly, _enhance), "cannot write '{tmp}/enhanced/x.png': the file "
         "system is read-only (EROFS)", fresh_out=False),
    # --- issue 28, class 1: no command writes outside its output, over an input or over a finished result ----
    Case("degrade over its input", lambda c: _with_tools(c, ["degrade", "--modality", "toy", str(folder(c.tmp / "in")),
                                                              "--out", str(c.tmp / "in")]),
         "writing '{tmp}/in/a.png' would overwrite the input '{tmp}/in/a.png'", fresh_out=False),
    Case("degrade over one input file", lambda c: _with_tools(c, ["degrade", "--modality", "toy", str(png(
        c.tmp / "in" / "x.png")), "--out", str(c.tmp / "in")]), "would overwrite the input", fresh_out=False),
    Case("adapt in place over a finished phase 2", lambda c: ["adapt", "--from", str(c.run())],
         "run '{tmp}/run' already holds a phase 2 in '{tmp}/run/adapt'", fresh_out=False),
    Case("enhance suffix leads outside --out", lambda c: _enhance(c, "--suffix", "/../../escaped"),
         "outside the output folder '{tmp}/enhanced'", fresh_out=False),
    Case("enhance compare image over an input", lambda c: ["enhance", "--run", str(c.run()), str(png(
        c.tmp / "in" / "x.png")), str(png(c.tmp / "in" / "x_enh_compare.png")), "--out", str(c.tmp / "in"), "--suffix",
        "_enh", "--compare"], "would overwrite the input '{tmp}/in/x_enh_compare.png'", fresh_out=False),
    # --- class 2: named options validated before work; a NaN output is an error naming the image --------------
    Case("evaluate unknown path", lambda c: ["evaluate", "--run", str(c.run()), "--paths", "fast,bogus"],
         "run '{tmp}/run' has no enhancement path 'bogus'", fresh_out=False),
    Case("enhanced output NaN", _with(_nan_backbone, _enhance), "enhancing '{tmp}/in/x.png' gave NaN or infinite "
         "values, so it was not written", fresh_out=False),
    Case("config value nan", _set("eval.eta=nan"), "config key 'eval.eta' must be a finite number, not 'nan'"),
    # --- class 3: write and decode errors are one sentence naming the file -----------------------------------
    Case("config not UTF-8", lambda c: c.train("--config", str(_write(c.tmp / "c.yaml", b"train:\n  lr: \xff\n"))),
         "config file '{tmp}/c.yaml' cannot be read as UTF-8 text (invalid start byte)"),
    Case("config is a folder", lambda c: c.train("--config", str(_mkdir(c.tmp / "c.yaml"))),
         "config file '{tmp}/c.yaml' cannot be read as UTF-8 text (Is a directory)"),
    Case("checkpoint larger than allowed", _with(_checkpoint_too_large, lambda c: c.train()),
         "cannot write '{tmp}/out/reconstruct/checkpoint': the file would exceed the largest size allowed (EFBIG)",
         fresh_out=False),
    Case("disk full, no file name in the error", _with(_fsync_disk_full, lambda c: c.train()),
         "cannot write '{tmp}/out/config.yaml': the disk is full (ENOSPC)", fresh_out=False),
    # --- class 4: words that name the culprit -----------------------------------------------------------------
    Case("config duplicate key", lambda c: c.train("--config", str(_write(c.tmp / "c.yaml", b"train:\n  adapt_steps: 2\n"
                                                                          b"  adapt_steps: 3\n"))),
         "config file '{tmp}/c.yaml' is not valid YAML: the key 'adapt_steps' is given twice (again on line 3)"),
    Case("image of 1x1 px", lambda c: ["enhance", "--run", str(c.run()), str(png(c.tmp / "in" / "x.png", 1, 1)), "--out",
                                       str(c.tmp / "enhanced")], "'{tmp}/in/x.png' is too small or not a 2-D image: "
         "images need 2×2 px at least", fresh_out=False),
    Case("built-in name taken by another plugin", lambda c: _impostor(c, c.train("--backbone", "cnn-ae", "--set",
                                                                                 "model.block_out_channels=[8]")),
         "backbone 'cnn-ae' now comes from plugin 'rdiff_impostor' (module 'rdiff_impostor', no distribution), not "
         "from rdiff's built-in"),
]



def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _rm(path: Path) -> bool:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return True


def _corrupt(root: Path) -> Path:
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _only_broken(root: Path) -> Path:
    root.mkdir()
    (root / "broken.png").write_bytes(b"not an image")
    return root


def _without_hq(root: Path) -> Path:
    folder(root / "lq")
    return root


def _corrupt_pair(root: Path) -> Path:
    pairs(root)
    (root / "lq" / "b.png").write_bytes(b"garbage")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained toy run (phase 1 and 2) that the run and weight cases copy and damage."""
    import os

    from rdiff import plugins

    out = tmp_path_factory.mktemp("probes") / "trained"
    tests = str(Path(__file__).parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RDIFF_DISABLE_PLUGIN_AUTOLOAD", "1")
        mp.setenv("RDIFF_PLUGINS", "toy_plugin")
        mp.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
        plugins.reset()
        assert main(["train", *TOY, "--out", str(out)]) == 0
        plugins.reset()
    return out


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_probe(case, toy, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, trained, monkeypatch)
    argv = case.setup(ctx)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert case.culprit.format(tmp=tmp_path) in err, err
    assert "Traceback" not in err and "File \"" not in err, err
    assert case.unsaid not in err, err
    after = snapshot(tmp_path)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"existing files changed or removed: {changed}"
    written = [p for p in after if p not in before and not p.startswith(("out/", "lib/"))]
    assert not written, f"a refused command wrote outside its new run directory: {written}"
    if case.fresh_out:
        assert not (tmp_path / "out").exists(), "a refused run must write nothing to --out"
