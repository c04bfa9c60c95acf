"""``rdiff bench``: reconstruction-then-adaptation against its baselines, for every backbone × modality (× adaptor).

For each backbone × modality and each seed, one phase-1 run (:meth:`rdiff.engine.Engine.reconstruct`)
serves every adaptor and every pairs count: the adaptations are adapt-only runs that reference it, as
``rdiff adapt --from RUN --out NEW`` makes. Every model is scored on one fixed set of held-out crops per
modality with :func:`rdiff.evaluation.score`. Methods (the ``method`` of a row):

- ``input``: the degraded input itself;
- ``clahe``: classical contrast-limited adaptive histogram equalisation of the luminance
  (``skimage.exposure.equalize_adapthist``), inside the region of interest;
- ``reconstruct-only``: the phase-1 model with no adaptation (zero pairs);
- ``scratch``: the same backbone from random initialisation, every parameter trained on the same pairs
  with its ``supervised_loss`` and the adaptation budget (``BenchEngine.scratch`` in this module);
- ``adapted``: the phase-1 model with the adaptor trained on the pairs.

Output in ``--out DIR``: ``results.json`` (``{"settings": ..., "rows": [...]}``, one row per method ×
enhancement path × pairs count, means and standard deviations over seeds), ``results.md`` (the same as
readable tables, with a breakdown by degradation type), ``convergence.png``, ``pairs.png``,
``grid-<modality>.png``, ``runs/`` (one run directory per trained model) and ``cache/`` (one file per
finished unit of work, named by a hash of its resolved configuration: a re-run skips what is there unless
``--force``; a unit that failed is not cached and runs again).

The default budget is small: 30 phase-1 steps per stage at batch 8 (``--reconstruct-steps``,
``--batch-size``) and 20 adaptation steps (``--adapt-steps``, also the from-scratch budget), where the tiny
presets train 300-400 and 150. With it, three backbones × three modalities × three seeds fit in half an hour
on an otherwise idle two-core CPU; on a shared one (one thread while another process keeps the other core
busy) the estimate is about 50 minutes. The estimate printed at the start is measured on the spot (one step
of each kind per backbone, the scoring of a few crops per modality), and the progress line refines it as
units finish. Raise the budget for a comparison that means more than a smoke test of the pipeline.

Threads: on a shared machine set ``OMP_NUM_THREADS=1``; OpenMP's spin-waiting makes two threads much
slower than one when the other core is busy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from rdiff.errors import UserError

BENCH_VERSION = 2  # bump when what a unit computes changes, so older cache entries stop matching
SAMPLES = 4  # held-out crops shown in each modality's before/after grid
CURVE_POINTS = 4  # validations per adaptation (plus the starting point): the convergence plot's resolution


# --- what to run ------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything the flags of ``rdiff bench`` say."""

    backbones: list[str]
    modalities: list[str]
    adaptors: list[str] = field(default_factory=lambda: ["residual"])
    preset: str = "tiny"
    pairs_counts: list[int] = field(default_factory=lambda: [5, 20])
    seeds: int = 3
    crops: int = 64
    # the budget; None keeps the preset's own (`--reconstruct-steps preset` and so on)
    reconstruct_steps: int | None = 30
    adapt_steps: int | None = 20
    batch_size: int | None = 8
    scratch_lr: float | None = None  # the from-scratch baseline's learning rate; None: the adaptation's
    uncertainty_samples: int = 4  # the hallucination report's samples per crop (rdiff_bench.hallucination); 0: none
    out: str = "runs/bench"
    force: bool = False
    dry_run: bool = False  # print the plan and its estimate, run nothing
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value, applied to every run

    @property
    def headline(self) -> int:
        """The pairs count whose runs are reported in full (sampling paths, by type, convergence)."""
        return max(self.pairs_counts)


@dataclass
class Unit:
    """One piece of work whose result is cached: baselines of a modality, a phase-1 run, an adaptation or a
    from-scratch run."""

    kind: str  # "baselines", "reconstruct", "adapt" or "scratch"
    backbone: str
    modality: str
    seed: int | None = None
    adaptor: str | None = None
    pairs: int | None = None
    config: Any = None  # the resolved RunConfig (None when the configuration itself failed)
    error: str | None = None  # why the configuration failed
    parent: Unit | None = None  # the phase-1 unit an adaptation starts from
    headline: bool = False
    key: str = ""
    estimate: float = 0.0  # seconds, from the measured step times
    uncertainty: int = 0  # samples per crop of the hallucination report (adaptations at the headline count)

    @property
    def label(self) -> str:
        what = {"baselines": "input and CLAHE", "reconstruct": "phase 1 (reconstruction)",
                "adapt": f"adapt {self.adaptor} on {self.pairs} pairs",
                "scratch": f"scratch on {self.pairs} pairs"}[self.kind]
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"{self.backbone} × {self.modality}{seed}: {what}"

    @property
    def dir_name(self) -> str:
        parts = [self.kind, self.backbone, self.modality, f"s{self.seed}"]
        if self.adaptor:
            parts.append(self.adaptor)
        if self.pairs is not None:
            parts.append(f"p{self.pairs}")
        return "-".join(parts + [self.key[:10]])


def run_config(settings: Settings, backbone: str, modality: str, seed: int, adaptor: str | None = None,
               pairs: int | None = None, scratch: bool = False) -> Any:
    """The resolved configuration of one run: the preset, the bench's budget, then ``--set`` on top (and
    ``--scratch-lr`` on top of that for a from-scratch run)."""
    from rdiff.registry import resolve_config

    names = {"backbone": backbone, "modality": modality, "preset": settings.preset, "seed": seed,
             "adaptor": adaptor or settings.adaptors[0]}
    preset = resolve_config([names]).train  # the backbone's stages and budget, as its preset names them
    steps = settings.adapt_steps or preset.adapt_steps
    budget = {"train": {"adapt_steps": steps, "val_every": max(1, math.ceil(steps / CURVE_POINTS)),
                        # only the final checkpoint: an interrupted unit starts again rather than resumes
                        "checkpoint_every": 10 ** 9, "log_every": max(1, steps // 10)},
              "eval": {"crops": settings.crops}}
    if settings.batch_size is not None:
        budget["train"]["batch_size"] = settings.batch_size
    if settings.reconstruct_steps is not None:
        budget["train"]["steps"] = {s: settings.reconstruct_steps for s in preset.steps}
    if pairs is not None:
        budget["train"]["pairs"] = pairs
    layers = [names, budget, settings.overrides]
    if scratch and settings.scratch_lr is not None:  # the from-scratch run trains with train.adapt_lr
        layers.append({"train": {"adapt_lr": settings.scratch_lr}})
    return resolve_config(layers)


def plan(settings: Settings) -> list[Unit]:
    """Every unit of work in running order: per backbone × modality, its baselines, then per seed its phase
    1, its adaptations (every adaptor × pairs count) and its from-scratch runs."""
    units: list[Unit] = []
    from rdiff_bench.hallucination import stochastic, unavailable

    report = settings.uncertainty_samples >= 2 and any(map(stochastic, settings.backbones)) and unavailable() is None
    for backbone in settings.backbones:
        for modality in settings.modalities:
            base = Unit("baselines", backbone, modality)
            try:
                base.config = run_config(settings, backbone, modality, 0)
            except UserError as exc:  # e.g. a preset this backbone lacks, a bad --set: this cell fails
                base.error = str(exc)
            units.append(base)
            for seed in range(settings.seeds):
                phase1 = _unit(settings, "reconstruct", backbone, modality, seed, base.error)
                units.append(phase1)
                for adaptor in settings.adaptors:
                    for n in settings.pairs_counts:
                        unit = _unit(settings, "adapt", backbone, modality, seed, base.error, adaptor, n)
                        unit.parent = phase1
                        if report and unit.headline and stochastic(backbone):
                            unit.uncertainty = settings.uncertainty_samples
                        units.append(unit)
                for n in settings.pairs_counts:
                    units.append(_unit(settings, "scratch", backbone, modality, seed, base.error, None, n))
    for unit in units:
        unit.key = unit_key(unit)
    return units


def _unit(settings: Settings, kind: str, backbone: str, modality: str, seed: int, error: str | None,
          adaptor: str | None = None, pairs: int | None = None) -> Unit:
    unit = Unit(kind, backbone, modality, seed, adaptor, pairs, error=error,
                headline=pairs is not None and pairs == settings.headline)
    if error is None:
        try:
            unit.config = run_config(settings, backbone, modality, seed, adaptor, pairs, scratch=kind == "scratch")
        except UserError as exc:
            unit.error = str(exc)
    return unit


# Keys that do not change what a unit computes: leaving them out of its hash lets one phase-1 run serve
# every adaptor and pairs count, and one set of baselines serve every backbone with the same crops.
_PHASE2_KEYS = ("adapt_steps", "adapt_lr", "adapt_batch_size", "pairs", "val_pairs", "val_every", "train_base")


def unit_key(unit: Unit) -> str:
    """A hash of everything that decides the unit's result (its resolved configuration, what it scores)."""
    if unit.config is None:
        return hashlib.sha256(repr((unit.kind, unit.backbone, unit.modality, unit.seed, unit.adaptor,
                                    unit.pairs)).encode()).hexdigest()
    from rdiff.config import to_dict

    config = to_dict(unit.config)
    config.pop("out", None)
    config.pop("reconstruct_from", None)
    if unit.kind == "baselines":  # only the held-out crops matter
        config = {"modality": config["modality"], "modality_options": config["modality_options"],
                  "data": config["data"], "resize": config["train"]["resize"],
                  "image_size": config["train"]["image_size"], "bad_images": config["train"]["bad_images"],
                  "crops": config["eval"]["crops"], "eval_seed": config["eval"]["seed"]}
    if unit.kind in ("reconstruct", "scratch"):
        config.pop("adaptor")
        config.pop("adaptor_options")
    if unit.kind == "reconstruct":
        config.pop("pairs")
        for key in _PHASE2_KEYS:
            config["train"].pop(key)
    what = {"version": BENCH_VERSION, "kind": unit.kind, "config": config, "headline": unit.headline,
            "parent": unit.parent.key if unit.parent else None}
    if unit.uncertainty:  # a unit without the report keeps its key (and its cached result)
        what["uncertainty_samples"] = unit.uncertainty
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


# --- running ----------------------------------------------------------------------------------------------------


class Bench:
    """Runs the planned units (or reads them from the cache), then writes the results and plots."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.out = Path(settings.out)
        self.cache_dir, self.runs_dir = self.out / "cache", self.out / "runs"
        self.units = plan(settings)
        self.results: dict[str, dict[str, Any]] = {}  # unit key -> result
        self.errors: dict[str, str] = {}  # unit key -> error message
        self._heldout: dict[str, list] = {}

    # -- cache --------------------------------------------------------------------------------------------
    def cached(self, unit: Unit) -> dict[str, Any] | None:
        path = self.cache_dir / f"{unit.key}.json"
        if self.settings.force or not path.is_file():
            return None
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # cut short by a kill: compute again
            return None
        if unit.kind == "reconstruct" and not (Path(result["run_dir"]) / "reconstruct" / "stages.json").is_file():
            return None  # its weights were deleted, and the adaptations need them
        return result

    def store(self, unit: Unit, result: dict[str, Any]) -> None:
        from rdiff.checkpoints import write_json  # the one atomic writer

        write_json(self.cache_dir / f"{unit.key}.json", result)

    # -- the whole bench ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from rdiff_bench.hallucination import skipped_line

        skipped = skipped_line(self.settings.uncertainty_samples, self.settings.backbones)
        if skipped:
            say(skipped)
        todo, planned = [], set()
        for unit in self.units:
            if unit.key in self.results or unit.key in planned:
                continue  # the same work planned twice (baselines shared by backbones with the same crops)
            found = self.cached(unit)
            if found is not None:
                self.results[unit.key] = found
            else:
                todo.append(unit)
                planned.add(unit.key)
        cached = sum(1 for u in self.units if u.key in self.results)
        if todo:
            say("measuring step times for the estimate ...")
        estimate_costs(self, todo)
        total = sum(u.estimate for u in todo)
        say(f"{len(todo)} units to run, {cached} from the cache in '{self.cache_dir}'; "
            f"estimated time {_duration(total)} (from step times measured now)")
        if self.settings.dry_run:
            for unit in todo:
                say(f"  {_duration(unit.estimate)}  {unit.label}")
            return {"settings": asdict(self.settings), "rows": [], "estimate_s": round(total, 1)}
        started, done_estimate = time.perf_counter(), 0.0
        for i, unit in enumerate(todo, 1):
            elapsed = time.perf_counter() - started
            pace = elapsed / done_estimate if done_estimate > 0 else 1.0  # how the estimate is doing so far
            remaining = (total - done_estimate) * pace
            say(f"[{i}/{len(todo)}] {unit.label} | elapsed {_duration(elapsed)}, ETA {_duration(remaining)}")
            self.run_unit(unit)
            done_estimate += unit.estimate
        rows = collect_rows(self)
        report = {"settings": {**asdict(self.settings), "headline_pairs": self.settings.headline}, "rows": rows}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (self.out / "results.md").write_text(results_markdown(self, rows), encoding="utf-8")
        write_plots(self, rows)
        say(f"{len(rows)} rows in {self.out / 'results.json'}; tables in {self.out / 'results.md'}; "
            f"took {_duration(time.perf_counter() - started)}")
        return report

    def run_unit(self, unit: Unit) -> None:
        """Compute one unit; a failure is recorded with its message (and the traceback in errors.log)."""
        blocked = unit.error
        if blocked is None and unit.parent is not None and unit.parent.key in self.errors:
            blocked = f"phase 1 failed: {self.errors[unit.parent.key]}"
        if blocked:
            self.errors[unit.key] = blocked
            return
        run_dir = self.runs_dir / unit.dir_name
        if run_dir.exists():  # left by a run that was stopped or by --force: start again
            shutil.rmtree(run_dir)
        try:
            result = {"baselines": self._baselines, "reconstruct": self._reconstruct, "adapt": self._adapt,
                      "scratch": self._scratch}[unit.kind](unit, run_dir)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed unit is reported and the bench goes on
            message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self.errors[unit.key] = message
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "errors.log", "a", encoding="utf-8") as log:
                log.write(f"--- {unit.label}\n{traceback.format_exc()}\n")
            say(f"failed: {unit.label}: {message}")
            return
        result.update(kind=unit.kind, backbone=unit.backbone, modality=unit.modality, seed=unit.seed,
                      adaptor=unit.adaptor, pairs=unit.pairs, run_dir=str(run_dir) if run_dir.exists() else None)
        self.results[unit.key] = result
        self.store(unit, result)

    # -- held-out data ------------------------------------------------------------------------------------
    def heldout(self, config: Any, modality: Any) -> list:
        """The fixed held-out crops of a configuration, exactly as Engine.evaluate makes them."""
        from rdiff.evaluation import heldout_pairs

        key = json.dumps([config.modality, config.modality_options, config.data, config.train.resize,
                          config.train.image_size, config.eval.crops, config.eval.seed], sort_keys=True, default=str)
        if key not in self._heldout:
            self._heldout[key] = heldout_pairs(modality, config)
        return self._heldout[key]

    # -- the four kinds of unit ---------------------------------------------------------------------------
    def _baselines(self, unit: Unit, run_dir: Path) -> dict[str, Any]:
        import numpy as np
        import torch

        from rdiff.registry import create_modality
        from rdiff.evaluation import score

        config = unit.config
        modality = create_modality(config.modality, **config.modality_options)
        pairs = self.heldout(config, modality)
        started = time.perf_counter()
        scores = {"input": score(modality, pairs, lambda lq: lq, torch.device("cpu")),
                  "clahe": score(modality, pairs, clahe_batch, torch.device("cpu"))}
        shown = pairs[:SAMPLES]
        self._save_samples(unit, {"input": np.stack([p.lq for p in shown]),
                                  "clahe": np.stack([clahe(p.lq, p.roi) for p in shown]),
                                  "clean": np.stack([p.hq for p in shown])})
        return {"scores": scores, "crops": len(pairs), "time_s": round(time.perf_counter() - started, 2)}

    def _reconstruct(self, unit: Unit, run_dir: Path) -> dict[str, Any]:
        from rdiff.report import parameter_counts

        engine = make_engine(_with_out(unit.config, run_dir), run_dir)
        engine.save_config()
        engine.reconstruct()
        result = self._evaluate(unit, engine, sampling=False, typed=True)
        engine.write_report(self._report_eval(unit, result), None)
        counts = parameter_counts(engine.backbone, unit.config.train.train_base)
        return {**result, "trainable": 0, "total": counts["base"], "steps": 0,
                "reconstruct_steps": dict(unit.config.train.steps), "time_s": engine.times.get("reconstruct", 0.0)}

    def _adapt(self, unit: Unit, run_dir: Path) -> dict[str, Any]:
        from rdiff.report import parameter_counts

        parent_dir = self.results[unit.parent.key]["run_dir"]
        config = replace(_with_out(unit.config, run_dir), reconstruct_from=str(Path(parent_dir).resolve()))
        engine = make_engine(config, run_dir)
        engine.save_config()
        engine.load_reconstruction()
        info = engine.adapt()
        result = self._evaluate(unit, engine, sampling=unit.headline, typed=unit.headline)
        if unit.uncertainty:
            result["hallucination"] = self._hallucination(unit, engine)
        engine.write_report(self._report_eval(unit, result), info)
        counts = parameter_counts(engine.backbone, config.train.train_base)
        return {**result, "trainable": counts["trainable"], "total": counts["total"],
                "steps": config.train.adapt_steps, "best_step": info["best_step"],
                "curve": validation_curve(run_dir, "adapt"), "time_s": engine.times.get("adapt", 0.0)}

    def _scratch(self, unit: Unit, run_dir: Path) -> dict[str, Any]:
        from rdiff.reconstructor import Reconstructor

        engine = make_engine(_with_out(unit.config, run_dir), run_dir)
        engine.save_config()
        trained = parameters_reached(engine.backbone, unit.config.train.image_size)
        info = engine.scratch()
        # the default supervised loss trains the fast path only; sampling paths are scored when the backbone
        # overrides it (and so trains its denoiser too)
        own_loss = type(engine.backbone).supervised_loss is not Reconstructor.supervised_loss
        result = self._evaluate(unit, engine, sampling=unit.headline and own_loss, typed=unit.headline)
        return {**result, "trainable": trained, "total": sum(p.numel() for p in engine.backbone.parameters()),
                "steps": unit.config.train.adapt_steps, "best_step": info["best_step"],
                "curve": validation_curve(run_dir, "scratch"), "time_s": engine.times.get("scratch", 0.0)}

    def _evaluate(self, unit: Unit, engine: Any, *, sampling: bool, typed: bool) -> dict[str, Any]:
        """Scores of ``fast`` (and of the sampling paths when ``sampling``) on the held-out crops; the
        breakdown by degradation type only when ``typed`` (it costs several times the plain score)."""
        import torch

        from rdiff.data import stack
        from rdiff.evaluation import enhancer, named_paths, sampling_settings, score

        config, backbone, device = unit.config, engine.backbone, engine.device
        pairs = self.heldout(config, engine.modality)
        scored = pairs if typed else [replace(p, params={}) for p in pairs]
        options = {name: choice for name, choice in named_paths(backbone, sampling_settings(config)).items()
                   if name == "fast" or (sampling and choice[0] != "fast")}
        backbone.eval()
        started = time.perf_counter()
        scores = {name: score(engine.modality, scored, enhancer(backbone, choice, device, config.eval.seed), device)
                  for name, choice in options.items()}  # each path from the same noise
        if unit.seed == 0 and (unit.kind == "reconstruct" or unit.headline):  # the before/after grid
            with torch.no_grad():
                lq = stack(pairs[:SAMPLES])["lq"].to(device)
                out = backbone.enhance(lq, path="fast").float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
            self._save_samples(unit, {"fast": out})
        return {"paths": scores, "crops": len(pairs), "eval_time_s": round(time.perf_counter() - started, 2)}

    def _hallucination(self, unit: Unit, engine: Any) -> dict[str, Any]:
        """The hallucination report (:mod:`rdiff_bench.hallucination`) of the adapted model on the held-out
        crops, each enhanced whole, on the run's default sampling path from the evaluation's seed."""
        from rdiff_bench.hallucination import default_sampling, report

        pairs = self.heldout(unit.config, engine.modality)
        name, choice = default_sampling(engine.backbone, unit.config)
        started = time.perf_counter()
        result = report(engine.backbone, engine.modality, pairs, choice, samples=unit.uncertainty,
                        seed=unit.config.eval.seed, tile=max(max(p.lq.shape[:2]) for p in pairs),
                        device=engine.device)
        return {**result, "path": name, "time_s": round(time.perf_counter() - started, 2)}

    def _report_eval(self, unit: Unit, result: dict[str, Any]) -> dict[str, Any]:
        """The ``eval`` section of the run's report.json (so each run directory reads like any other)."""
        baselines = next((self.results.get(u.key) for u in self.units if u.kind == "baselines"
                          and u.backbone == unit.backbone and u.modality == unit.modality), None)
        evaluation = {"crops": result["crops"], "paths": result["paths"], "default_path": "fast",
                      "enhanced": result["paths"]["fast"]}
        if baselines:
            evaluation["input"] = baselines["scores"]["input"]
        return evaluation

    def _save_samples(self, unit: Unit, arrays: dict[str, Any]) -> None:
        import numpy as np

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / f"{unit.key}.npz", "wb") as f:
            np.savez_compressed(f, **arrays)

    def samples(self, unit: Unit) -> dict[str, Any] | None:
        import numpy as np

        path = self.cache_dir / f"{unit.key}.npz"
        if unit.key not in self.results or not path.is_file():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}


@lru_cache(maxsize=1)
def _engine_class() -> type:
    import torch

    from rdiff.checkpoints import write_json
    from rdiff.data import PairCrops
    from rdiff.engine import Engine  # torch: when the bench runs, not at start-up
    from rdiff.training import BestSoFar, Fit, stable_seed
    from rdiff import evaluation  # validation_psnr through its module, so that tests can replace it
    from rdiff.evaluation import default_name, named_paths, sampling_settings

    class BenchEngine(Engine):
        """The engine, with the degradation parameters left off its validation crops (validation needs only
        the overall PSNR, and :func:`rdiff.evaluation.score` would also score each crop once per
        degradation type it carries: several times the cost, paid at every validation), and the
        from-scratch baseline (:meth:`scratch`)."""

        def pairs(self) -> tuple[list, list, int]:
            train_pairs, val_pairs, size = super().pairs()
            return train_pairs, [replace(p, params={}) for p in val_pairs], size

        # --- baseline: the same backbone trained from scratch on the pairs -----------------------------------
        def scratch(self) -> dict[str, Any]:
            """The from-scratch baseline of phase 2: every parameter of this backbone (random initialisation:
            no phase 1 loaded) trains on the same pairs with its ``supervised_loss`` and the phase-2 budget
            (``train.adapt_steps``, ``train.adapt_lr``); the best by validation PSNR is kept and saved to
            ``scratch/``. Metrics are logged under the phase ``scratch``."""
            cfg, train = self.config, self.config.train
            started = time.perf_counter()
            train_pairs, val_pairs, size = self.pairs()  # the pairs adapt() gets with the same seed
            val_path = named_paths(self.backbone, sampling_settings(cfg)).get(default_name(self.backbone, cfg), ("fast", None))
            best = BestSoFar()

            def validate(step: int) -> dict[str, float]:
                psnr = evaluation.validation_psnr(self.backbone, self.modality, val_pairs, val_path, self.device,
                                                  cfg.eval.seed)
                best.offer(psnr, step, self.backbone.state_dict)
                return {"val_psnr": round(psnr, 4), "best_step": best.step}

            def restore(tensors: dict[str, dict[str, torch.Tensor]]) -> None:
                self.backbone.load_state_dict(tensors["model"])
                best.load_from(tensors)

            length = train.adapt_steps * train.grad_accum * train.adapt_batch_size * self.accelerator.num_processes
            self.fit(Fit(phase="scratch", stage="scratch", params=list(self.backbone.parameters()),
                          dataset=PairCrops(train_pairs, size, length, stable_seed(cfg.seed, "adapt")),
                          steps=train.adapt_steps, lr=train.adapt_lr, batch_size=train.adapt_batch_size,
                          loss=lambda model, b: model("supervised_loss", b["lq"], b["hq"], b["roi"]),
                          weights=lambda: best.save_into({"model": self.backbone.state_dict()}), restore=restore,
                          validate=validate, val_every=train.val_every))
            if best.weights is not None:
                self.backbone.load_state_dict(best.weights)
            self.say(f"kept the scratch model of step {best.step} (validation PSNR {best.psnr:.2f} dB)")
            if self.is_main:
                self.backbone.save(self.run_dir / "scratch")
                write_json(self.run_dir / "scratch" / "scratch.json", {"best_step": best.step, "val_psnr": best.psnr})
            self.accelerator.wait_for_everyone()
            self.times["scratch"] = round(time.perf_counter() - started, 1)
            return {"best_step": best.step, "val_psnr": round(best.psnr, 4), "pairs": len(train_pairs),
                    "val_crops": len(val_pairs)}

    return BenchEngine


def make_engine(config: Any, run_dir: Path) -> Any:
    """An engine for one bench run (see ``_engine_class``)."""
    return _engine_class()(config, run_dir)


def _with_out(config: Any, run_dir: Path) -> Any:
    return replace(config, out=str(run_dir))


def parameters_reached(backbone: Any, size: int) -> int:
    """How many parameters the backbone's ``supervised_loss`` trains (those it sends a gradient to)."""
    import torch

    x = torch.rand(1, backbone.channels, size, size, device=next(backbone.parameters()).device)
    params = list(backbone.parameters())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    out = backbone.supervised_loss(x, x, torch.ones_like(x[:, :1]))
    (out[0] if isinstance(out, tuple) else out).backward()
    reached = sum(p.numel() for p in params if p.grad is not None)
    for p in params:
        p.grad = None
    return reached


def validation_curve(run_dir: Path, phase: str) -> list[list[float]]:
    """``[[step, validation PSNR], ...]`` logged by the engine during ``phase``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [[r["step"], r["val_psnr"]] for r in records if r.get("phase") == phase and "val_psnr" in r]


# --- the classical baseline ---------------------------------------------------------------------------------------


def clahe(image: Any, roi: Any = None) -> Any:
    """CLAHE of an ``H×W×C`` image in [0, 1]: on the CIELAB lightness for colour images (so hues stay), on
    the image itself for grey ones; outside ``roi`` the input is kept."""
    import numpy as np
    from skimage import color, exposure

    if image.shape[2] == 3:
        lab = color.rgb2lab(image)
        lab[..., 0] = exposure.equalize_adapthist(lab[..., 0] / 100.0) * 100.0
        with warnings.catch_warnings():  # brightened saturated colours leave the sRGB gamut: clipped, as said
            warnings.simplefilter("ignore", UserWarning)
            out = np.clip(color.lab2rgb(lab), 0, 1)
    else:
        out = exposure.equalize_adapthist(image[..., 0])[..., None]
    if roi is not None:
        out = np.where(roi[..., None], out, image)
    return out.astype(np.float32)


def clahe_batch(lq: Any) -> Any:
    """CLAHE of a ``B×C×H×W`` batch (the metrics count only the roi, so the roi is not needed here)."""
    import numpy as np
    import torch

    images = lq.detach().cpu().numpy().transpose(0, 2, 3, 1)
    out = np.stack([clahe(np.clip(img, 0, 1)) for img in images]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(out)).to(lq.device)


# --- the estimate -------------------------------------------------------------------------------------------------


@dataclass
class StepTimes:
    """Seconds per step of each part of a backbone's runs, measured on random crops of the bench's size."""

    stages: dict[str, float]  # phase-1 step per stage, at the phase-1 batch
    adapt: float  # phase-2 step at the adaptation batch
    scratch: float  # supervised step at the adaptation batch
    fast: float  # fast enhancement, per crop
    sampling: float  # every sampling path together, per crop


def measure_step_times(config: Any, channels: int) -> StepTimes:
    """Time one step of everything a cell trains (after one warm-up step) on a throw-away backbone."""
    import torch

    from rdiff.registry import create_adaptor, create_backbone
    from rdiff.evaluation import named_paths, sampling_settings

    torch.manual_seed(0)
    backbone = create_backbone(config.backbone, preset=None, channels=channels, **config.model)
    size, train = config.train.image_size, config.train

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(n, channels, size, size), torch.ones(n, 1, size, size)

    def step_time(loss: Any, params: list, n: int) -> float:
        x, roi = batch(n)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)

        def once() -> None:
            out = loss(x, roi)
            (out[0] if isinstance(out, tuple) else out).backward()
            for p in params:
                p.grad = None
        once()
        started = time.perf_counter()
        once()
        return time.perf_counter() - started

    stages = {stage: step_time(lambda x, roi, s=stage: backbone.reconstruction_loss(s, x, roi, x),
                               backbone.stage_parameters(stage), train.batch_size) for stage in backbone.stages}
    scratch = step_time(lambda x, roi: backbone.supervised_loss(x, x, roi), list(backbone.parameters()),
                        train.adapt_batch_size)
    backbone.eval()
    with torch.no_grad():  # per crop, at a batch near the evaluation's (small batches cost more per crop)
        x, _ = batch(8)
        fast = _timed(lambda: backbone.enhance(x, path="fast")) / len(x)
        sampling = sum(_timed(lambda p=p, o=o: backbone.enhance(x[:4], path=p, options=o)) / 4
                       for p, o in named_paths(backbone, sampling_settings(config)).values() if p != "fast")
    backbone.train()
    try:
        adaptor = create_adaptor(config.adaptor, backbone, **config.adaptor_options)
        adapt = step_time(lambda x, roi: backbone.adaptation_loss(x, x, roi), adaptor.trainable_parameters(),
                          train.adapt_batch_size)
    except Exception:  # noqa: BLE001 - a pairing that cannot work fails in its own cell; cost it as scratch
        adapt = scratch
    return StepTimes(stages, adapt, scratch, fast, sampling)


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@dataclass
class ModalityTimes:
    """Seconds spent on a modality's data outside the training steps."""

    plain: float  # scoring, per held-out crop
    typed: float  # scoring with the breakdown by degradation type, per held-out crop
    setup: float  # what every run does before training: load the training images, make its pairs


def measure_modality(bench: Bench, config: Any) -> ModalityTimes:
    """Time scoring 8 held-out crops (both ways) and one run's data set-up."""
    import torch

    from rdiff.registry import create_modality
    from rdiff.data import degraded_crops, load_items
    from rdiff.training import stable_seed
    from rdiff.evaluation import score

    modality = create_modality(config.modality, **config.modality_options)
    pairs = bench.heldout(config, modality)[:8]
    score(modality, pairs[:2], lambda lq: lq, torch.device("cpu"))  # warm-up: imports, filters
    untyped = [replace(p, params={}) for p in pairs]
    plain = _timed(lambda: score(modality, untyped, lambda lq: lq, torch.device("cpu")))
    typed = _timed(lambda: score(modality, pairs, lambda lq: lq, torch.device("cpu")))
    train = config.train
    setup = _timed(lambda: degraded_crops(
        modality, load_items(modality, config.data, "train", train.resize, train.image_size, train.bad_images),
        train.image_size, train.pairs + train.val_pairs, stable_seed(config.seed, "pairs")))
    return ModalityTimes(plain / len(pairs), typed / len(pairs), setup)


def estimate_costs(bench: Bench, units: list[Unit]) -> None:
    """Set each unit's ``estimate`` (seconds) from step and scoring times measured now, on this machine."""
    from rdiff.registry import create_modality

    times: dict[str, StepTimes | None] = {}
    data: dict[str, ModalityTimes | None] = {}
    for unit in units:
        if unit.config is None:
            continue
        config = unit.config
        if unit.backbone not in times and unit.kind != "baselines":
            try:
                channels = create_modality(config.modality, **config.modality_options).channels
                times[unit.backbone] = measure_step_times(config, channels)
            except Exception as exc:  # noqa: BLE001 - the real run reports the error in its cell
                times[unit.backbone] = None
                say(f"could not time {unit.backbone} ({type(exc).__name__}: {exc}); the estimate leaves it out")
        if unit.modality not in data:
            try:
                data[unit.modality] = measure_modality(bench, config)
            except Exception as exc:  # noqa: BLE001
                data[unit.modality] = None
                say(f"could not time {unit.modality} data ({type(exc).__name__}: {exc}); the estimate leaves it out")
        timed = data[unit.modality] or ModalityTimes(0.0, 0.0, 0.0)
        plain, typed = timed.plain, timed.typed
        crops, train = config.eval.crops, config.train
        if unit.kind == "baselines":
            unit.estimate = 2 * crops * typed + crops * 0.01  # input, CLAHE (about 10 ms a crop)
            continue
        t = times.get(unit.backbone)
        if t is None:
            continue
        per_score = crops * (typed if unit.headline or unit.kind == "reconstruct" else plain)
        evaluation = crops * t.fast + per_score + timed.setup
        if unit.kind == "reconstruct":
            unit.estimate = sum(t.stages.get(s, 0.0) * n for s, n in train.steps.items()) + evaluation
            continue
        validations = math.ceil(train.adapt_steps / train.val_every) + 1
        validation = validations * train.val_pairs * (t.fast + plain)
        step = t.adapt if unit.kind == "adapt" else t.scratch
        sampling = crops * (t.sampling + plain) if unit.headline and unit.kind == "adapt" else 0.0
        sampling += crops * unit.uncertainty * t.sampling  # the hallucination report (an upper bound)
        unit.estimate = train.adapt_steps * step + validation + evaluation + sampling


# --- results ------------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value), rounded to 4 decimals."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return round(float(array.mean()), 4), round(std, 4)


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every metric (and of every metric of every degradation type)."""
    names = [k for k in per_seed[0] if k != "by_type"]
    metrics = {k: dict(zip(("mean", "std"), mean_std([s[k] for s in per_seed]))) for k in names}
    out: dict[str, Any] = {"metrics": metrics}
    types = sorted({t for s in per_seed for t in s.get("by_type", {})})
    if types:
        out["by_type"] = {}
        for kind in types:
            present = [s["by_type"][kind] for s in per_seed if kind in s.get("by_type", {})]
            out["by_type"][kind] = {k: dict(zip(("mean", "std"), mean_std([p[k] for p in present])))
                                    for k in present[0]}
    return out


def make_row(base: dict[str, Any], entries: list[tuple[int | None, dict | None, str | None]],
             path: str | None, scores: Any) -> dict[str, Any]:
    """One row: ``entries`` are (seed, unit result or None, error or None); ``scores(result)`` picks the
    metrics of this row's path from a result (None when the result does not have it)."""
    found = [(seed, result, scores(result)) for seed, result, _ in entries if result is not None]
    found = [(seed, result, s) for seed, result, s in found if s is not None]
    errors = [error for _, _, error in entries if error]
    row = {**base, "path": path, "psnr": None, "psnr_std": None, "ssim": None, "ssim_std": None,
           "trainable_params": None, "total_params": None, "steps": None, "time_s": None,
           "seeds": [seed for seed, _, _ in found], "error": errors[0] if errors else None}
    if not found:
        return row
    summary = summarise([s for _, _, s in found])
    metrics = summary["metrics"]
    for name in ("psnr", "ssim"):
        if name in metrics:
            row[name], row[f"{name}_std"] = metrics[name]["mean"], metrics[name]["std"]
    first = found[0][1]
    row.update(trainable_params=first.get("trainable", 0), total_params=first.get("total", 0),
               steps=first.get("steps", 0), time_s=mean_std([r.get("time_s", 0.0) for _, r, _ in found])[0],
               crops=first.get("crops"), metrics=metrics, per_seed={k: [s[k] for _, _, s in found] for k in metrics})
    if "by_type" in summary:
        row["by_type"] = summary["by_type"]
    if any("best_step" in r for _, r, _ in found):
        row["best_steps"] = [r.get("best_step") for _, r, _ in found]
    return row


def collect_rows(bench: Bench) -> list[dict[str, Any]]:
    """Every row of results.json, grouped per backbone × modality (baselines, reconstruct-only, scratch,
    adapted), each row's figures summarised over seeds."""
    settings, rows = bench.settings, []

    def entries(units: list[Unit]) -> list[tuple[int | None, dict | None, str | None]]:
        return [(u.seed, bench.results.get(u.key), bench.errors.get(u.key)) for u in units]

    def path_scores(path: str) -> Any:
        return lambda result: result.get("paths", {}).get(path)

    for backbone in settings.backbones:
        for modality in settings.modalities:
            cell = [u for u in bench.units if u.backbone == backbone and u.modality == modality]
            base = {"backbone": backbone, "modality": modality, "adaptor": None, "preset": settings.preset}
            baseline = [u for u in cell if u.kind == "baselines"]
            # the baselines do not train: the one result stands for every seed (so its spread is 0)
            fixed = [(seed, result, error) for _, result, error in entries(baseline) for seed in range(settings.seeds)]
            for method in ("input", "clahe"):
                rows.append(make_row({**base, "method": method, "pairs": None}, fixed, None,
                                     lambda r, m=method: r["scores"][m]))
            phase1 = [u for u in cell if u.kind == "reconstruct"]
            rows.append(make_row({**base, "method": "reconstruct-only", "pairs": 0}, entries(phase1), "fast",
                                 path_scores("fast")))
            for n in settings.pairs_counts:
                runs = [u for u in cell if u.kind == "scratch" and u.pairs == n]
                for path in _paths(bench, runs):
                    rows.append(make_row({**base, "method": "scratch", "pairs": n}, entries(runs), path,
                                         path_scores(path)))
            for adaptor in settings.adaptors:
                for n in settings.pairs_counts:
                    runs = [u for u in cell if u.kind == "adapt" and u.adaptor == adaptor and u.pairs == n]
                    for path in _paths(bench, runs):
                        rows.append(make_row({**base, "adaptor": adaptor, "method": "adapted", "pairs": n},
                                             entries(runs), path, path_scores(path)))
                        reports = [r["hallucination"] for _, r, _ in entries(runs)
                                   if r is not None and (r.get("hallucination") or {}).get("path") == path]
                        if reports:
                            from rdiff_bench.hallucination import summarise as summarise_reports

                            rows[-1]["hallucination"] = summarise_reports(reports)
    return rows


def _paths(bench: Bench, units: list[Unit]) -> list[str]:
    """The enhancement paths scored for these runs (``fast`` first); ``fast`` alone when all failed."""
    paths = ["fast"]
    for unit in units:
        for path in bench.results.get(unit.key, {}).get("paths", {}):
            if path not in paths:
                paths.append(path)
    return paths


# --- results.md ---------------------------------------------------------------------------------------------------


def _number(value: Any, std: Any = None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{value:.{digits}f}"


def _count(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"


def results_markdown(bench: Bench, rows: list[dict[str, Any]]) -> str:
    s = bench.settings
    failed = [r for r in rows if r["error"]]
    lines = [
        "# rdiff bench", "",
        f"Preset `{s.preset}`; backbones {', '.join(s.backbones)}; modalities {', '.join(s.modalities)}; "
        f"adaptors {', '.join(s.adaptors)}; pairs {', '.join(map(str, s.pairs_counts))}; {s.seeds} seeds; "
        f"{s.crops} held-out crops. Budget: {_or_preset(s.reconstruct_steps)} phase-1 steps per stage at batch "
        f"{_or_preset(s.batch_size)}, {_or_preset(s.adapt_steps)} adaptation steps (adapted and scratch alike); "
        f"scratch learning rate {'as adaptation' if s.scratch_lr is None else s.scratch_lr}.", "",
        "Figures are means ± sample standard deviation over the training seeds (the held-out crops are the "
        "same for every seed, fixed by `eval.seed`), scored inside the region of interest. `input` and `clahe` "
        "do not train, so their spread is 0. `reconstruct-only` is the phase-1 model with zero pairs; "
        f"`scratch` and `adapted` are listed for every pairs count; the sampling paths (`ddimK`), the breakdown "
        f"by degradation type and the convergence curves are for the largest count ({s.headline} pairs).", "",
    ]
    preset_steps = {u.backbone: _preset_steps(u) for u in bench.units if u.kind == "reconstruct" and u.config}
    short = {b: n for b, n in preset_steps.items() if s.reconstruct_steps is not None and n > s.reconstruct_steps}
    if short:
        lines += [f"**Budget warning**: phase 1 trains {s.reconstruct_steps} steps per stage here, fewer than the "
                  f"`{s.preset}` presets do ({', '.join(f'{b}: {n}' for b, n in short.items())}); with so little "
                  "phase 1 the figures test the pipeline more than the method. Raise `--reconstruct-steps` and "
                  "`--adapt-steps` for a comparison that means more.", ""]
    if s.seeds < 3 or s.crops < 64:
        lines += [f"**Few samples**: {s.seeds} seed(s) and {s.crops} held-out crops; margins need at least 3 seeds "
                  "and 64 crops before they mean much (held-out PSNR moves by 1 dB or more between neighbouring "
                  "checkpoints at this scale).", ""]
    if failed:
        lines += [f"**{len(failed)} row(s) failed** (the error is in the last column; tracebacks in errors.log).", ""]
    from rdiff_bench import hallucination

    reported = any(r.get("hallucination") for r in rows)  # the two columns of the hallucination report
    extra = "".join(f" {h} |" for h in hallucination.HEADERS) if reported else ""
    for modality in s.modalities:
        lines += [f"## {modality}", "",
                  f"| backbone | adaptor | method | path | pairs | PSNR (dB) | SSIM |{extra} trained / total params | "
                  "steps | time (s) | seeds | error |",
                  "|---|---|---|---|---|---|---|" + "---|" * (2 * reported) + "---|---|---|---|---|"]
        for r in (r for r in rows if r["modality"] == modality):
            found = "".join(f" {c} |" for c in hallucination.cells(r.get("hallucination"))) if reported else ""
            lines.append(
                f"| {r['backbone']} | {r['adaptor'] or ''} | {r['method']} | {r['path'] or ''} | "
                f"{'' if r['pairs'] is None else r['pairs']} | {_number(r['psnr'], r['psnr_std'])} | "
                f"{_number(r['ssim'], r['ssim_std'], 3)} |{found} {_count(r['trainable_params'])} / "
                f"{_count(r['total_params'])} | {'' if r['steps'] is None else r['steps']} | "
                f"{_number(r['time_s'], None, 1)} | {len(r['seeds'])} | {_cell(r['error'])} |")
        lines += [""] + _by_type_table(rows, modality, s.headline)
    lines += [
        "## Notes", "",
        "- `scratch` trains every parameter its `supervised_loss` reaches (by default L1 inside the roi between the "
        "fast path and the clean image), from random initialisation, with the same steps and batch as adaptation "
        "on the same pairs, keeping the best step by validation PSNR like adaptation does. Its learning rate is "
        "adaptation's (`train.adapt_lr`) unless `--scratch-lr` gives another: a randomly initialised model "
        "usually wants a higher one, so compare against the best you find. Its sampling paths are scored only for "
        "backbones whose `supervised_loss` also trains their denoiser.",
        "- `clahe` is scikit-image's `equalize_adapthist` with its defaults (tiles of 1/8 of the crop, clip limit "
        "0.01) on the CIELAB lightness (on the image itself for one channel), kept inside the region of interest. "
        "It stretches the lightness over the full range by design (contrast, not fidelity), which PSNR against "
        "the clean image penalises.",
        "- `trained / total params`: parameters trained on the pairs (0 for `reconstruct-only`; the adaptor for "
        "`adapted`) and parameters used at enhancement.",
        "- `time (s)`: mean training time of the method per seed (phase 1 for `reconstruct-only`, phase 2 only "
        "for `adapted`), without evaluation.",
        "- Plots: `convergence.png` (validation PSNR during adaptation vs from scratch), `pairs.png` "
        "(held-out PSNR vs number of pairs), `grid-<modality>.png` (held-out crops before and after).",
        *([hallucination.note(s.uncertainty_samples)] if reported else []), ""]
    return "\n".join(lines)


def _or_preset(value: int | None) -> str:
    return "the preset's" if value is None else str(value)


def _preset_steps(unit: Unit) -> int:
    """The most steps any phase-1 stage trains in the unit's preset (what the bench's budget replaces)."""
    from rdiff.registry import get_preset

    steps = get_preset(unit.backbone, unit.config.preset).get("train", {}).get("steps") or {}
    return max(steps.values(), default=0)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _by_type_table(rows: list[dict[str, Any]], modality: str, headline: int) -> list[str]:
    chosen = [r for r in rows if r["modality"] == modality and r.get("by_type")
              and (r["pairs"] in (None, 0, headline)) and r["path"] in (None, "fast")]
    if not chosen:
        return []
    types = sorted({t for r in chosen for t in r["by_type"]})
    lines = [f"### {modality}: PSNR (dB) / SSIM by degradation type ({headline} pairs, path fast)", "",
             "| backbone | method | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
    for r in chosen:
        label = r["method"] + (f" ({r['adaptor']})" if r["adaptor"] else "")
        cells = []
        for t in types:
            m = r["by_type"].get(t)
            cells.append(f"{m['psnr']['mean']:.2f} / {m['ssim']['mean']:.3f}" if m and "psnr" in m and "ssim" in m
                         else "—")
        lines.append(f"| {r['backbone']} | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


# --- plots --------------------------------------------------------------------------------------------------------


def write_plots(bench: Bench, rows: list[dict[str, Any]]) -> None:
    """convergence.png, pairs.png and one grid-<modality>.png (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = bench.settings
    cells = [(b, m) for b in s.backbones for m in s.modalities]

    def axes_grid() -> tuple[Any, Any]:
        fig, axes = plt.subplots(len(s.backbones), len(s.modalities), squeeze=False,
                                 figsize=(4.2 * len(s.modalities), 3.2 * len(s.backbones)))
        return fig, axes

    # convergence: validation PSNR vs step at the headline pairs count, mean ± std over seeds
    fig, axes = axes_grid()
    for (b, m), ax in zip(cells, axes.flat):
        series = [(f"adapted ({a})", [u for u in bench.units if u.kind == "adapt" and u.adaptor == a])
                  for a in s.adaptors]
        series.append(("scratch", [u for u in bench.units if u.kind == "scratch"]))
        for label, units in series:
            curves = [bench.results[u.key]["curve"] for u in units if u.backbone == b and u.modality == m
                      and u.pairs == s.headline and u.key in bench.results and bench.results[u.key].get("curve")]
            _band(ax, _mean_curve(curves), label)
        ax.set(title=f"{b} × {m} ({s.headline} pairs)", xlabel="step", ylabel="validation PSNR (dB)")
        _legend(ax)
    _save(fig, bench.out / "convergence.png")

    # held-out PSNR vs number of pairs (0 = reconstruct-only for the adapted curve)
    fig, axes = axes_grid()
    for (b, m), ax in zip(cells, axes.flat):
        mine = [r for r in rows if r["backbone"] == b and r["modality"] == m and r["psnr"] is not None]
        start = [r for r in mine if r["method"] == "reconstruct-only"]
        for label, picked in [(f"adapted ({a})", start + [r for r in mine if r["method"] == "adapted"
                                                          and r["adaptor"] == a and r["path"] == "fast"])
                              for a in s.adaptors] + [("scratch", [r for r in mine if r["method"] == "scratch"
                                                                   and r["path"] == "fast"])]:
            if picked:
                ax.errorbar([r["pairs"] for r in picked], [r["psnr"] for r in picked],
                            yerr=[r["psnr_std"] for r in picked], marker="o", capsize=3, label=label)
        for method, style in (("input", ":"), ("clahe", "--")):
            for r in (r for r in mine if r["method"] == method):
                ax.axhline(r["psnr"], linestyle=style, color="grey", label=method)
        ax.set(title=f"{b} × {m}", xlabel="pairs", ylabel="held-out PSNR (dB), fast")
        _legend(ax)
    _save(fig, bench.out / "pairs.png")

    for m in s.modalities:
        write_grid(bench, m, plt)


def _mean_curve(curves: list[list[list[float]]]) -> list[tuple[float, float, float]]:
    """(step, mean, std) at the steps every curve logged."""
    if not curves:
        return []
    steps = sorted(set.intersection(*[{step for step, _ in c} for c in curves]))
    out = []
    for step in steps:
        values = [v for c in curves for s_, v in c if s_ == step]
        mean, std = mean_std(values)
        out.append((step, mean, std))
    return out


def _band(ax: Any, curve: list[tuple[float, float, float]], label: str) -> None:
    if not curve:
        return
    steps, means, stds = zip(*curve)
    line, = ax.plot(steps, means, marker=".", label=label)
    ax.fill_between(steps, [a - b for a, b in zip(means, stds)], [a + b for a, b in zip(means, stds)],
                    color=line.get_color(), alpha=0.2)


def _legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def write_grid(bench: Bench, modality: str, plt: Any) -> None:
    """Held-out crops of one modality: degraded, CLAHE, per backbone reconstruct-only / scratch / adapted
    (seed 0, the first adaptor, the largest pairs count), and the clean crop."""
    import numpy as np

    s = bench.settings

    def find(kind: str, backbone: str | None = None, **match: Any) -> Unit | None:
        for u in bench.units:
            if u.kind == kind and u.modality == modality and (backbone is None or u.backbone == backbone) \
                    and all(getattr(u, k) == v for k, v in match.items()):
                return u
        return None

    baselines = next((bench.samples(u) for u in bench.units if u.kind == "baselines" and u.modality == modality
                      and bench.samples(u) is not None), None)
    columns: list[tuple[str, Any]] = []
    if baselines:
        columns += [("degraded", baselines["input"]), ("CLAHE", baselines["clahe"])]
    for b in s.backbones:
        for title, unit in (("reconstruct-only", find("reconstruct", b, seed=0)),
                            ("scratch", find("scratch", b, seed=0, pairs=s.headline)),
                            ("adapted", find("adapt", b, seed=0, pairs=s.headline, adaptor=s.adaptors[0]))):
            got = bench.samples(unit) if unit else None
            columns.append((f"{b}\n{title}", got["fast"] if got else None))
    if baselines:
        columns.append(("clean", baselines["clean"]))
    count = max((len(c) for _, c in columns if c is not None), default=0)
    if not count:
        return
    fig, axes = plt.subplots(count, len(columns), squeeze=False, figsize=(1.5 * len(columns), 1.5 * count + 0.6))
    for j, (title, images) in enumerate(columns):
        for i in range(count):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if images is None:
                ax.text(0.5, 0.5, "failed", ha="center", va="center", fontsize=8)
            else:
                image = np.clip(images[i], 0, 1)
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(title, fontsize=7)
    _save(fig, bench.out / f"grid-{modality}.png")


# --- command line -------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"rdiff bench: {message}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag} needs at least one name, got '{text}'.")
    return names


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise UserError(f"--pairs-counts takes whole numbers separated by commas, got '{text}'.") from None
    if not counts or counts[0] < 1:
        raise UserError(f"--pairs-counts takes positive numbers of pairs, got '{text}'.")
    return counts


def settings_from_args(args: argparse.Namespace) -> Settings:
    from rdiff.config import parse_set
    from rdiff.registry import get_preset

    for flag in ("seeds", "crops", "reconstruct_steps", "adapt_steps", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}.")
    if args.scratch_lr is not None and not args.scratch_lr > 0:
        raise UserError(f"--scratch-lr must be a positive learning rate, not {args.scratch_lr}.")
    from rdiff.plugins import plugins

    overrides = parse_set(args.set)
    for key in ("backbone", "modality", "adaptor", "preset", "seed", "out", "reconstruct_from"):
        if key in overrides:
            raise UserError(f"--set {key}=... is chosen by the bench itself; use its own flags "
                            f"(--backbones, --modalities, --adaptors, --preset, --seeds, --out).")
    names = {kind: _names(text, f"--{plural}") for kind, plural, text in (
        ("backbone", "backbones", args.backbones), ("modality", "modalities", args.modalities),
        ("adaptor", "adaptors", args.adaptors))}
    for kind, listed in names.items():
        for name in listed:
            plugins().get(kind, name)  # a misspelled name stops here, before anything runs
    for backbone in names["backbone"]:  # and so does a preset one of them lacks
        get_preset(backbone, args.preset)
    return Settings(backbones=names["backbone"], modalities=names["modality"], adaptors=names["adaptor"],
                    preset=args.preset,
                    pairs_counts=_counts(args.pairs_counts), seeds=args.seeds, crops=args.crops,
                    reconstruct_steps=args.reconstruct_steps, adapt_steps=args.adapt_steps,
                    batch_size=args.batch_size, scratch_lr=args.scratch_lr,
                    uncertainty_samples=_uncertainty_samples(args), out=args.out, force=args.force,
                    dry_run=args.dry_run, overrides=overrides)


def _uncertainty_samples(args: argparse.Namespace) -> int:
    from rdiff_bench.hallucination import DEFAULT_SAMPLES, check_samples

    samples = getattr(args, "uncertainty_samples", DEFAULT_SAMPLES)
    check_samples(samples)
    return samples


def require_matplotlib() -> None:
    """Stop before any training when the plots could not be drawn at the end (matplotlib is an extra)."""
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        raise UserError("rdiff bench draws its plots with matplotlib, which is not installed; "
                        "install it with `pip install rdiff[bench]`.")
