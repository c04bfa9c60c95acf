"""The two-phase engine: phase 1 ``reconstruct`` on unpaired images, phase 2 ``adapt`` on pairs.

One model-agnostic loop (:meth:`Engine._fit`) trains whatever parameters a phase names, with the loss the
backbone defines. It runs on accelerate, so ``accelerate launch`` or ``torchrun`` spreads the same command
over many GPUs or nodes (data sharded per process, gradients all-reduced, only the main process writes).

Determinism and resume: dataset item ``i`` is a function of ``(seed, i)`` and the torch RNG is re-seeded
from ``(seed, phase, stage, step, process)`` at every step, so a run resumed from a checkpoint continues
exactly as if it had never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rdiff.api import create_adaptor, create_backbone, create_modality
from rdiff.checkpoints import load_checkpoint, save_checkpoint, write_json
from rdiff.config import RunConfig, to_dict
from rdiff.data import CleanCrops, PairCrops, degraded_crops, fixed_crops, load_items, load_pair_folder
from rdiff.errors import TrainingStopped, UserError
from rdiff.evaluation import evaluate, path_options, validation_psnr
from rdiff.plugins import plugins


class TrainingModule(nn.Module):
    """Backbone and adaptor under one module, so DDP sees (and synchronises) every trainable parameter."""

    def __init__(self, backbone: nn.Module, adaptor: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.adaptor = adaptor

    def forward(self, task: str, *args: Any, **kwargs: Any) -> Any:
        return self.backbone(task, *args, **kwargs)


@dataclass
class Fit:
    """What one call of the training loop needs to know about its phase."""

    phase: str  # "reconstruct" or "adapt"
    stage: str  # backbone stage, or "adapt"
    params: list[nn.Parameter]
    dataset: Any
    steps: int
    lr: float
    batch_size: int
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], Any]
    weights: Callable[[], dict[str, dict[str, torch.Tensor]]]  # what a checkpoint saves
    restore: Callable[[dict[str, dict[str, torch.Tensor]]], None]  # and how it comes back
    validate: Callable[[int], dict[str, float]] | None = None  # called every val_every steps and at the end
    val_every: int = 0


@dataclass
class BestSoFar:
    """The best validation of a phase-2 run and its weights. It travels in every checkpoint, so a resumed
    run still keeps the best step rather than the last."""

    psnr: float = -math.inf
    step: int = 0
    weights: dict[str, torch.Tensor] | None = None

    def offer(self, psnr: float, step: int, weights: Callable[[], dict[str, torch.Tensor]]) -> None:
        if psnr > self.psnr:
            self.psnr, self.step = psnr, step
            self.weights = {k: v.detach().cpu().clone() for k, v in weights().items()}

    def save_into(self, tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        if self.weights is not None:
            tensors["best"] = self.weights
            tensors["best_meta"] = {"psnr": torch.tensor(self.psnr), "step": torch.tensor(self.step)}
        return tensors

    def load_from(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        if "best" in tensors:
            self.weights = tensors["best"]
            self.psnr = float(tensors["best_meta"]["psnr"])
            self.step = int(tensors["best_meta"]["step"])


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any values (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class Engine:
    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False, cli_args: Any = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        train = config.train
        self.accelerator = Accelerator(
            cpu=train.cpu or not torch.cuda.is_available(), mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train.find_unused_parameters)])
        torch.manual_seed(config.seed)
        self.modality = create_modality(config.modality, **config.modality_options)
        self.backbone = create_backbone(config.backbone, preset=None, channels=self.modality.channels, **config.model)
        if train.gradient_checkpointing and hasattr(self.backbone, "enable_gradient_checkpointing"):
            self.backbone.enable_gradient_checkpointing()
        self.backbone.to(self.device)
        self.hook = plugins().pm.hook
        self.times: dict[str, float] = {}
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.hook.rdiff_run_started(run_dir=self.run_dir, config=config, cli_args=cli_args)

    # --- small helpers ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def reconstruct_dir(self) -> Path:
        """Where phase 1's weights are: this run's, or the run it adapts (``adapt --from RUN --out NEW``)."""
        source = Path(self.config.reconstruct_from) if self.config.reconstruct_from else self.run_dir
        return source / "reconstruct"

    def say(self, message: str) -> None:
        if self.is_main:
            tqdm.write(f"rdiff: {message}")

    def log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # --- phase 1 ---------------------------------------------------------------------------------------------
    def reconstruct(self) -> None:
        """Train each backbone stage in turn on unpaired clean crops; save each network when its stage ends."""
        cfg, train = self.config, self.config.train
        started = time.perf_counter()
        items = load_items(self.modality, cfg.data, "train", train.resize, train.image_size, train.bad_images)
        done_file = self.reconstruct_dir / "stages.json"
        done = json.loads(done_file.read_text())["done"] if done_file.is_file() else []
        if done:
            self.backbone.load(self.reconstruct_dir)
            self.say(f"phase-1 stages already finished: {', '.join(done)}")
        world = self.accelerator.num_processes
        for stage in self.backbone.stages:
            if stage in done:
                continue
            if stage not in train.steps:
                raise UserError(f"config key 'train.steps' has no entry for the backbone stage '{stage}' "
                                f"(stages: {', '.join(self.backbone.stages)}).")
            steps = train.steps[stage]
            length = steps * train.grad_accum * train.batch_size * world
            degraded = self.modality if self.backbone.needs_degraded(stage) else None
            dataset = CleanCrops(items, train.image_size, length, stable_seed(cfg.seed, "reconstruct", stage), degraded)
            self._fit(Fit(
                phase="reconstruct", stage=stage, params=self.backbone.stage_parameters(stage), dataset=dataset,
                steps=steps, lr=train.lr, batch_size=train.batch_size,
                loss=lambda model, b, s=stage: model("reconstruction_loss", s, b["clean"], b["roi"], b.get("degraded")),
                weights=lambda: {"model": self.backbone.state_dict()},
                restore=lambda t: self.backbone.load_state_dict(t["model"])))
            done.append(stage)
            if self.is_main:
                self.backbone.save(self.reconstruct_dir)
                write_json(done_file, {"done": done})
            self.accelerator.wait_for_everyone()
        self.times["reconstruct"] = round(time.perf_counter() - started, 1)

    # --- phase 2 ---------------------------------------------------------------------------------------------
    def load_reconstruction(self) -> None:
        done_file = self.reconstruct_dir / "stages.json"
        done = json.loads(done_file.read_text())["done"] if done_file.is_file() else []
        if list(done) != list(self.backbone.stages):
            raise UserError(f"'{self.reconstruct_dir.parent}' has no finished phase 1 "
                            f"(stages done: {', '.join(done) or 'none'}); run `rdiff reconstruct` first.")
        self.backbone.load(self.reconstruct_dir)

    def pairs(self) -> tuple[list, list]:
        """Training and validation pairs: a user's folder, or crops degraded on the fly (seeded)."""
        cfg, train = self.config, self.config.train
        if cfg.pairs:
            all_pairs = load_pair_folder(self.modality, cfg.pairs, train.resize)
            if len(all_pairs) < 2:
                raise UserError(f"pairs folder '{cfg.pairs}' holds {len(all_pairs)} pair; at least 2 are needed "
                                f"(one to train, one to validate).")
            n_val = min(max(1, len(all_pairs) // 5), len(all_pairs) - 1)
            val = fixed_crops(all_pairs[-n_val:], train.image_size, max(train.val_pairs, n_val), cfg.seed + 1)
            return all_pairs[:-n_val], val
        items = load_items(self.modality, cfg.data, "train", train.resize, train.image_size, train.bad_images)
        made = degraded_crops(self.modality, items, train.image_size, train.pairs + train.val_pairs,
                              stable_seed(cfg.seed, "pairs"))
        return made[:train.pairs], made[train.pairs:]

    def adapt(self) -> dict[str, Any]:
        """Attach the adaptor to the frozen backbone and train only it; keep the best by validation PSNR."""
        cfg, train = self.config, self.config.train
        started = time.perf_counter()
        train_pairs, val_pairs = self.pairs()
        self.say(f"adapting with {len(train_pairs)} pairs ({len(val_pairs)} validation crops)")
        adaptor = create_adaptor(cfg.adaptor, self.backbone, **cfg.adaptor_options).to(self.device)
        params = list(adaptor.trainable_parameters())
        if train.train_base:
            params += [p for p in self.backbone.finetune_parameters() if all(p is not q for q in params)]
        val_opts = path_options(self.backbone, cfg.eval.sample_steps, cfg.eval.eta).get(cfg.eval.path, {"path": "fast"})
        best = BestSoFar()

        def weights() -> dict[str, dict[str, torch.Tensor]]:
            out = {"adaptor": adaptor.adaptor_state_dict()}
            if train.train_base:
                out["model"] = self.backbone.state_dict()
            return best.save_into(out)

        def restore(tensors: dict[str, dict[str, torch.Tensor]]) -> None:
            adaptor.load_adaptor_state_dict(tensors["adaptor"])
            if "model" in tensors:
                self.backbone.load_state_dict(tensors["model"], strict=False)
            best.load_from(tensors)

        def validate(step: int) -> dict[str, float]:
            psnr = validation_psnr(self.backbone, self.modality, val_pairs, val_opts, self.device, cfg.eval.seed)
            best.offer(psnr, step, adaptor.adaptor_state_dict)
            return {"val_psnr": round(psnr, 4), "best_step": best.step}

        steps = train.adapt_steps
        length = steps * train.grad_accum * train.adapt_batch_size * self.accelerator.num_processes
        dataset = PairCrops(train_pairs, train.image_size, length, stable_seed(cfg.seed, "adapt"))
        fit = Fit(phase="adapt", stage="adapt", params=params, dataset=dataset, steps=steps, lr=train.adapt_lr,
                  batch_size=train.adapt_batch_size,
                  loss=lambda model, b: model("adaptation_loss", b["lq"], b["hq"], b["roi"]),
                  weights=weights, restore=restore, validate=validate, val_every=train.val_every)
        self._fit(fit)
        if best.weights is not None:
            adaptor.load_adaptor_state_dict(best.weights)
        self.say(f"kept the adaptor of step {best.step} (validation PSNR {best.psnr:.2f} dB)")
        if self.is_main:
            from safetensors.torch import save_file

            adapt_dir = self.run_dir / "adapt"
            adapt_dir.mkdir(parents=True, exist_ok=True)
            tmp = adapt_dir / ".adaptor.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in adaptor.adaptor_state_dict().items()}, str(tmp))
            tmp.replace(adapt_dir / "adaptor.safetensors")
            if train.train_base:
                self.backbone.save(adapt_dir / "base")
            write_json(adapt_dir / "adaptor.json", {"adaptor": cfg.adaptor, "options": cfg.adaptor_options,
                                                    "best_step": best.step, "val_psnr": best.psnr,
                                                    "train_base": train.train_base})
        self.accelerator.wait_for_everyone()
        self.times["adapt"] = round(time.perf_counter() - started, 1)
        return {"best_step": best.step, "val_psnr": round(best.psnr, 4), "pairs": len(train_pairs),
                "val_crops": len(val_pairs)}

    # --- baseline: the same backbone trained from scratch on the pairs ---------------------------------------
    def scratch(self) -> dict[str, Any]:
        """The from-scratch baseline of phase 2: every parameter of this backbone (random initialisation:
        no phase 1 loaded) trains on the same pairs with its ``supervised_loss`` and the phase-2 budget
        (``train.adapt_steps``, ``train.adapt_lr``); the best by validation PSNR is kept and saved to
        ``scratch/``. Metrics are logged under the phase ``scratch``."""
        cfg, train = self.config, self.config.train
        started = time.perf_counter()
        train_pairs, val_pairs = self.pairs()  # the pairs adapt() gets with the same seed
        val_opts = path_options(self.backbone, cfg.eval.sample_steps, cfg.eval.eta).get(cfg.eval.path, {"path": "fast"})
        best = BestSoFar()

        def validate(step: int) -> dict[str, float]:
            psnr = validation_psnr(self.backbone, self.modality, val_pairs, val_opts, self.device, cfg.eval.seed)
            best.offer(psnr, step, self.backbone.state_dict)
            return {"val_psnr": round(psnr, 4), "best_step": best.step}

        def restore(tensors: dict[str, dict[str, torch.Tensor]]) -> None:
            self.backbone.load_state_dict(tensors["model"])
            best.load_from(tensors)

        length = train.adapt_steps * train.grad_accum * train.adapt_batch_size * self.accelerator.num_processes
        self._fit(Fit(phase="scratch", stage="scratch", params=list(self.backbone.parameters()),
                      dataset=PairCrops(train_pairs, train.image_size, length, stable_seed(cfg.seed, "adapt")),
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

    # --- the loop ----------------------------------------------------------------------------------------------
    def _fit(self, fit: Fit) -> dict[str, Any]:
        acc, train, cfg = self.accelerator, self.config.train, self.config
        trainable = {id(p) for p in fit.params}
        owner = TrainingModule(self.backbone, self.backbone.adaptor)
        for p in owner.parameters():  # freeze everything the phase does not name
            p.requires_grad_(id(p) in trainable)
        assert {id(p) for p in owner.parameters() if p.requires_grad} == trainable, \
            "parameters outside the phase would train"
        optimizer = torch.optim.AdamW(fit.params, lr=fit.lr, weight_decay=0.0)
        warmup = max(train.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        ema = None
        if train.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            ema = EMAModel(fit.params, decay=train.ema_decay)
        loader = DataLoader(fit.dataset, batch_size=fit.batch_size, shuffle=False, drop_last=True,
                            num_workers=train.num_workers)
        model, optimizer, loader, scheduler = acc.prepare(owner, optimizer, loader, scheduler)

        checkpoint_dir = self.run_dir / fit.phase / "checkpoint"
        step, extra = self._resume(fit, checkpoint_dir, optimizer, scheduler, ema)
        if step >= fit.steps:
            return extra
        batches = acc.skip_first_batches(loader, step * train.grad_accum) if step else loader

        def checkpoint() -> None:
            acc.wait_for_everyone()
            if self.is_main:
                tensors = fit.weights()
                if ema is not None:
                    tensors["ema"] = {str(i): p for i, p in enumerate(ema.shadow_params)}
                save_checkpoint(checkpoint_dir, tensors=tensors,
                                state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                                info={"phase": fit.phase, "stage": fit.stage, "step": step, **extra})
                self.hook.rdiff_checkpoint_saved(phase=fit.phase, stage=fit.stage, step=step, path=checkpoint_dir)
            acc.wait_for_everyone()

        def validate() -> None:
            if fit.validate is None:
                return
            with self._ema_weights(ema, fit.params):
                result = fit.validate(step)
            extra.update(result)
            self.log({"phase": fit.phase, "stage": fit.stage, "step": step, **result})

        if step == 0:
            validate()  # the starting point (for adaptors: the reconstruction-only model)
        bar = tqdm(total=fit.steps, initial=step, desc=f"{fit.phase}:{fit.stage}", disable=not self.is_main,
                   dynamic_ncols=True)
        model.train()
        bad, started, seen = 0, time.perf_counter(), 0
        for batch in batches:
            torch.manual_seed(stable_seed(cfg.seed, fit.phase, fit.stage, step, acc.process_index))
            with acc.accumulate(model):
                with acc.autocast():
                    out = fit.loss(model, batch)
                loss, logs = out if isinstance(out, tuple) else (out, {})
                nonfinite = acc.reduce((~torch.isfinite(loss.detach())).float(), "sum")
                if nonfinite.item() == 0:
                    acc.backward(loss)
                    if acc.sync_gradients and train.clip_grad > 0:
                        acc.clip_grad_norm_(fit.params, train.clip_grad)
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += batch[next(iter(batch))].shape[0] * acc.num_processes
            if not acc.sync_gradients:
                continue
            if nonfinite.item() > 0:
                bad += 1
                self.log({"phase": fit.phase, "stage": fit.stage, "step": step, "nonfinite_loss": True})
                if bad >= train.max_bad_steps:
                    raise TrainingStopped(
                        f"the {fit.phase}:{fit.stage} loss was not finite for {bad} consecutive steps at step "
                        f"{step}; the last good checkpoint is kept in '{checkpoint_dir}' (try a lower learning "
                        f"rate or train.mixed_precision=no).")
                continue
            bad = 0
            step += 1
            if ema is not None:
                ema.step(fit.params)
            bar.update(1)
            if step % train.log_every == 0 or step == fit.steps:
                mean_loss = acc.reduce(loss.detach().float(), "mean").item()
                record = {"phase": fit.phase, "stage": fit.stage, "step": step, "loss": round(mean_loss, 6),
                          "lr": scheduler.get_last_lr()[0],
                          "images_per_s": round(seen / max(time.perf_counter() - started, 1e-9), 2),
                          **{k: round(float(v), 6) for k, v in logs.items()}}
                self.log(record)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if self.is_main:
                    self.hook.rdiff_step_end(phase=fit.phase, stage=fit.stage, step=step, logs=record)
            if fit.val_every and (step % fit.val_every == 0 or step == fit.steps):
                validate()
            if step % train.checkpoint_every == 0 or step == fit.steps:
                checkpoint()
            if step >= fit.steps:
                break
        bar.close()
        if ema is not None:  # the EMA weights are the ones kept
            ema.copy_to(fit.params)
        return extra

    def _resume(self, fit: Fit, directory: Path, optimizer: Any, scheduler: Any, ema: Any) -> tuple[int, dict]:
        """Continue from this phase's last complete checkpoint when it belongs to this stage."""
        if not self.resume:
            return 0, {}
        found = load_checkpoint(directory)
        if found is None:
            return 0, {}
        tensors, state, info, path = found
        if info.get("stage") != fit.stage:
            return 0, {}
        fit.restore(tensors)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "ema" in tensors:
            ema.shadow_params = [tensors["ema"][str(i)].to(self.device) for i in range(len(ema.shadow_params))]
        step = int(info["step"])
        self._truncate_log(fit.phase, fit.stage, step)
        self.say(f"resuming phase {fit.phase} ({fit.stage}) at step {step} from '{path}'")
        extra = {k: v for k, v in info.items() if k not in ("phase", "stage", "step")}
        return step, extra

    def _truncate_log(self, phase: str, stage: str, step: int) -> None:
        """Drop metrics.jsonl lines written after the checkpoint we resume from (they will be written again)."""
        log = self.run_dir / "metrics.jsonl"
        if not self.is_main or not log.is_file():
            return
        keep = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by the kill
            if rec.get("phase") == phase and rec.get("stage") == stage and rec.get("step", 0) > step:
                continue
            keep.append(line)
        log.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    @staticmethod
    def _ema_weights(ema: Any, params: list[nn.Parameter]) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def swapped():
            if ema is None:
                yield
                return
            ema.store(params)
            ema.copy_to(params)
            try:
                yield
            finally:
                ema.restore(params)
        return swapped()

    # --- evaluation and the report ---------------------------------------------------------------------------
    def evaluate(self, data: str | None = None) -> dict[str, Any] | None:
        """Held-out evaluation on the main process (the others wait)."""
        cfg = self.config
        result = None
        if self.is_main:
            started = time.perf_counter()
            items = load_items(self.modality, data if data is not None else cfg.data, "heldout",
                               cfg.train.resize, cfg.train.image_size, cfg.train.bad_images)
            pairs = degraded_crops(self.modality, items, cfg.train.image_size, cfg.eval.crops, cfg.eval.seed)
            result = evaluate(self.backbone, self.modality, pairs, default_path=cfg.eval.path,
                              sample_steps=cfg.eval.sample_steps, eta=cfg.eval.eta, seed=cfg.eval.seed,
                              device=self.device, autocast=self.accelerator.autocast)
            self.times["evaluate"] = round(time.perf_counter() - started, 1)
        self.accelerator.wait_for_everyone()
        return result

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.backbone.parameters())
        adaptor = self.backbone.adaptor
        adaptor_params = adaptor.trainable_parameters() if adaptor is not None else []
        inside = {id(p) for p in self.backbone.parameters()}
        extra = sum(p.numel() for p in adaptor_params if id(p) not in inside)  # LoRA lives inside the base
        trainable = sum(p.numel() for p in adaptor_params)
        if self.config.train.train_base:
            trainable += sum(p.numel() for p in self.backbone.finetune_parameters())
        return {"total": total + extra, "trainable": trainable, "base": total}

    def write_report(self, evaluation: dict[str, Any] | None, adapt_info: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.config
        report = {
            "backbone": cfg.backbone, "modality": cfg.modality,
            "adaptor": cfg.adaptor if self.backbone.adaptor is not None else None, "preset": cfg.preset,
            "params": self.parameter_counts(),
            "eval": evaluation or {},
            "time_s": {"reconstruct": self.times.get("reconstruct", 0.0), "adapt": self.times.get("adapt", 0.0),
                       "evaluate": self.times.get("evaluate", 0.0)},
        }
        if adapt_info:
            report["adapt"] = adapt_info
        if cfg.reconstruct_from:
            report["reconstruct_from"] = cfg.reconstruct_from
        if self.is_main:
            write_json(self.run_dir / "report.json", report)
            self.hook.rdiff_run_finished(run_dir=self.run_dir, report=report)
        return report

    def save_config(self) -> None:
        if self.is_main:
            import yaml

            tmp = self.run_dir / ".config.yaml.tmp"
            tmp.write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False), encoding="utf-8")
            tmp.replace(self.run_dir / "config.yaml")


def run(config: RunConfig, run_dir: str | Path, *, phases: tuple[str, ...] = ("reconstruct", "adapt"),
        resume: bool = False, cli_args: Any = None) -> dict[str, Any] | None:
    """Train ``phases`` into ``run_dir``, evaluate on held-out data, write report.json; returns the report
    (on the main process; ``None`` on the others)."""
    if not resume and (Path(run_dir) / "config.yaml").exists() and "reconstruct" in phases:
        raise UserError(f"run directory '{run_dir}' already holds a run; resume it or choose another directory.")
    from rdiff import preflight

    preflight.check(config, create_modality(config.modality, **config.modality_options), phases)
    engine = Engine(config, run_dir, resume=resume, cli_args=cli_args)
    engine.save_config()
    if "reconstruct" in phases:
        engine.reconstruct()
    else:
        engine.load_reconstruction()
    adapt_info = engine.adapt() if "adapt" in phases else None
    evaluation = engine.evaluate()
    report = engine.write_report(evaluation, adapt_info)
    return report if engine.is_main else None
