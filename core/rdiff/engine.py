"""The two-phase engine: phase 1 ``reconstruct`` on unpaired images, phase 2 ``adapt`` on pairs.

One model-agnostic loop (:meth:`Engine.fit`) trains whatever parameters a phase names, with the loss the
backbone defines, on accelerate (``accelerate launch`` / ``torchrun``: data sharded, only the main process
writes). Dataset item ``i`` is a function of ``(seed, i)`` and the RNG is re-seeded from ``(seed, phase,
stage, step, process)`` at every step, so a resumed run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rdiff.checkpoints import record_weights, save_checkpoint, write_json, write_weights
from rdiff.config import RunConfig
from rdiff.data import CleanCrops, PairCrops, adaptation_pairs, load_items
from rdiff.errors import TrainingStopped, UserError
from rdiff.evaluation import default_name, evaluate, heldout_pairs, named_paths, sampling_settings, validation_psnr
from rdiff.plugins import plugins
from rdiff.registry import create_adaptor, create_components, create_modality
from rdiff.report import build_report, carry_times
from rdiff.run import (discard_untrained, load_phase1, mark_stages_done, reconstruct_dir, stages_done, truncate_log,
                       write_config)
from rdiff.training import BestSoFar, Fit, TrainingModule, ema_weights, optimisers, progress, resume_from, stable_seed


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
        self.modality, self.backbone = create_components(config)
        if train.gradient_checkpointing and hasattr(self.backbone, "enable_gradient_checkpointing"):
            self.backbone.enable_gradient_checkpointing()
        self.backbone.to(self.device)
        self.hook = plugins().pm.hook
        self.times: dict[str, float] = {}
        # what needs the built backbone (crop multiple, stages, paths, disk space) is checked before the
        # run directory is created, so a refused run leaves nothing behind
        from rdiff.preflight import check_backbone

        check_backbone(config, self.backbone, self.run_dir)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.hook.rdiff_run_started(run_dir=self.run_dir, config=config, cli_args=cli_args)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def reconstruct_dir(self) -> Path:
        """Where phase 1's weights are: this run's, or the run it adapts (``adapt --from RUN --out NEW``)."""
        return reconstruct_dir(self.config, self.run_dir)

    def say(self, message: str) -> None:
        if self.is_main:
            tqdm.write(f"rdiff: {message}")

    def log(self, record: dict[str, Any]) -> None:  # a line of metrics.jsonl, also shown to the observers
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.hook.rdiff_step_end(phase=record["phase"], stage=record["stage"], step=record["step"], logs=record)

    # --- phase 1 ---------------------------------------------------------------------------------------------
    def reconstruct(self) -> None:
        """Train each backbone stage in turn on unpaired clean crops; save each network when its stage ends."""
        cfg, train = self.config, self.config.train
        started = time.perf_counter()
        items = load_items(self.modality, cfg.data, "train", train.resize, train.image_size, train.bad_images)
        done = stages_done(self.reconstruct_dir)
        if done:
            self.backbone.load(self.reconstruct_dir)
            self.say(f"phase-1 stages already finished: {', '.join(done)}")
        world = self.accelerator.num_processes
        for stage in self.backbone.stages:
            if stage in done:
                continue
            steps = train.steps[stage]
            length = steps * train.grad_accum * train.batch_size * world
            degraded = self.modality if self.backbone.needs_degraded(stage) else None
            dataset = CleanCrops(items, self.backbone.stage_image_size(stage, train), length, stable_seed(cfg.seed, "reconstruct", stage), degraded)
            self.fit(Fit(
                phase="reconstruct", stage=stage, params=self.backbone.stage_parameters(stage), dataset=dataset,
                steps=steps, lr=train.lr, batch_size=train.batch_size,
                loss=lambda model, b, s=stage: model("reconstruction_loss", s, b["clean"], b["roi"], b.get("degraded")),
                weights=lambda: {"model": self.backbone.state_dict()},
                restore=lambda t: self.backbone.load_state_dict(t["model"])))
            done.append(stage)
            if self.is_main:
                self.backbone.save(self.reconstruct_dir)
                mark_stages_done(self.reconstruct_dir, done)
                record_weights(self.reconstruct_dir.parent, self.reconstruct_dir)  # sizes and hashes
            self.accelerator.wait_for_everyone()
        self.times["reconstruct"] = round(time.perf_counter() - started, 1)

    # --- phase 2 ---------------------------------------------------------------------------------------------
    def load_reconstruction(self) -> None:
        load_phase1(self.backbone, self.config, self.run_dir, hint="; run `rdiff reconstruct` first")

    def pairs(self) -> tuple[list, list, int]:  # training and validation pairs of phase 2, their crop side
        return adaptation_pairs(self.modality, self.config)

    def adapt(self) -> dict[str, Any]:
        """Attach the adaptor to the frozen backbone and train only it; keep the best by validation PSNR."""
        cfg, train = self.config, self.config.train
        started = time.perf_counter()
        train_pairs, val_pairs, size = self.pairs()
        self.say(f"adapting with {len(train_pairs)} pairs ({len(val_pairs)} validation crops of {size} px)")
        adaptor = create_adaptor(cfg.adaptor, self.backbone, **cfg.adaptor_options).to(self.device)
        params = list(adaptor.trainable_parameters())
        if train.train_base:
            params += [p for p in self.backbone.finetune_parameters() if all(p is not q for q in params)]
        val_path = named_paths(self.backbone, sampling_settings(cfg)).get(default_name(self.backbone, cfg), ("fast", None))
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
            psnr = validation_psnr(self.backbone, self.modality, val_pairs, val_path, self.device, cfg.eval.seed)
            best.offer(psnr, step, adaptor.adaptor_state_dict)
            return {"val_psnr": round(psnr, 4), "best_step": best.step}

        steps = train.adapt_steps
        length = steps * train.grad_accum * train.adapt_batch_size * self.accelerator.num_processes
        dataset = PairCrops(train_pairs, size, length, stable_seed(cfg.seed, "adapt"))
        fit = Fit(phase="adapt", stage="adapt", params=params, dataset=dataset, steps=steps, lr=train.adapt_lr,
                  batch_size=train.adapt_batch_size,
                  loss=lambda model, b: model("adaptation_loss", b["lq"], b["hq"], b["roi"]),
                  weights=weights, restore=restore, validate=validate, val_every=train.val_every)
        self.fit(fit)
        if best.weights is not None:
            adaptor.load_adaptor_state_dict(best.weights)
        self.say(f"kept the adaptor of step {best.step} (validation PSNR {best.psnr:.2f} dB)")
        if self.is_main:
            adapt_dir = self.run_dir / "adapt"
            write_weights(adapt_dir / "adaptor.safetensors", adaptor.adaptor_state_dict())
            if train.train_base:
                self.backbone.save(adapt_dir / "base")
            record_weights(self.run_dir, adapt_dir)
            write_json(adapt_dir / "adaptor.json", {"adaptor": cfg.adaptor, "options": cfg.adaptor_options,
                                                    "best_step": best.step, "val_psnr": best.psnr,
                                                    "train_base": train.train_base})
        self.accelerator.wait_for_everyone()
        self.times["adapt"] = round(time.perf_counter() - started, 1)
        return {"best_step": best.step, "val_psnr": round(best.psnr, 4), "pairs": len(train_pairs),
                "val_crops": len(val_pairs)}

    # --- the loop ----------------------------------------------------------------------------------------------
    def fit(self, fit: Fit) -> dict[str, Any]:
        acc, train, cfg = self.accelerator, self.config.train, self.config
        trainable = {id(p) for p in fit.params}
        owner = TrainingModule(self.backbone, self.backbone.adaptor)
        for p in owner.parameters():  # freeze everything the phase does not name
            p.requires_grad_(id(p) in trainable)
        assert {id(p) for p in owner.parameters() if p.requires_grad} == trainable, \
            "parameters outside the phase would train"
        optimizer, scheduler, ema = optimisers(fit, train)
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
            with ema_weights(ema, fit.params):
                result = fit.validate(step)
            extra.update(result)
            self.log({"phase": fit.phase, "stage": fit.stage, "step": step, **result})

        if step == 0:
            validate()  # the starting point (for adaptors: the reconstruction-only model)
        bar = progress(total=fit.steps, initial=step, desc=f"{fit.phase}:{fit.stage}", disable=not self.is_main,
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
                          # three significant digits: a large preset on a CPU takes minutes per image
                          "images_per_s": float(f"{seen / max(time.perf_counter() - started, 1e-9):.3g}"),
                          **{k: round(float(v), 6) for k, v in logs.items()}}
                self.log(record)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)  # shown at the next redraw
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
        found = resume_from(directory, fit, optimizer, scheduler, ema, self.device) if self.resume else None
        if found is None:
            return 0, {}
        step, extra, path = found
        if self.is_main:
            truncate_log(self.run_dir, fit.phase, fit.stage, step)
        self.say(f"resuming phase {fit.phase} ({fit.stage}) at step {step} from '{path}'")
        return step, extra

    # --- evaluation and the report ---------------------------------------------------------------------------
    def evaluate(self, data: str | None = None) -> dict[str, Any] | None:
        """Held-out evaluation on the main process (the others wait)."""
        cfg = self.config
        result = None
        if self.is_main:
            started = time.perf_counter()
            pairs = heldout_pairs(self.modality, cfg, data=data)
            result = evaluate(self.backbone, self.modality, pairs, config=cfg, device=self.device,
                              autocast=self.accelerator.autocast)
            self.times["evaluate"] = round(time.perf_counter() - started, 1)
        self.accelerator.wait_for_everyone()
        return result

    def write_report(self, evaluation: dict[str, Any] | None, adapt_info: dict[str, Any] | None) -> dict[str, Any]:
        report = build_report(self.config, self.backbone, evaluation, adapt_info, self.times)
        if self.is_main:
            write_json(self.run_dir / "report.json", report)
            self.hook.rdiff_run_finished(run_dir=self.run_dir, report=report)
        return report

    def save_config(self, note: str | None = None) -> None:  # config.yaml, with earlier resume notes and ``note``
        if self.is_main:
            write_config(self.run_dir, self.config, note)


def run(config: RunConfig, run_dir: str | Path, *, phases: tuple[str, ...] = ("reconstruct", "adapt"),
        resume: bool = False, cli_args: Any = None, note: str | None = None) -> dict[str, Any] | None:
    """Train ``phases`` into ``run_dir``, evaluate on held-out data, write report.json; returns the report
    (on the main process; ``None`` on the others). Everything checkable is checked before anything is
    written (:mod:`rdiff.preflight`); ``note`` (what a resume changed) is recorded in config.yaml."""
    from rdiff import preflight

    if not resume and (Path(run_dir) / "config.yaml").exists() and "reconstruct" in phases:
        raise UserError(f"run directory '{run_dir}' already holds a run; resume it or choose another directory.")
    preflight.check_run(config, run_dir, phases=phases)
    preflight.check_heldout(config, create_modality(config.modality, **config.modality_options))
    fresh = not Path(run_dir).exists()
    try:
        engine = Engine(config, run_dir, resume=resume, cli_args=cli_args)
        engine.save_config(note)
        if note:
            engine.say(note)
        if "reconstruct" in phases:
            engine.reconstruct()
        else:
            engine.load_reconstruction()
    except UserError:
        if fresh:  # refused before any training: leave no half-made run to trip over when rerunning
            discard_untrained(run_dir)
        raise
    adapt_info = engine.adapt() if "adapt" in phases else None
    evaluation = engine.evaluate()
    if resume:  # a resumed run adds its time to what the run had already spent
        engine.times = carry_times(run_dir, engine.times)
    report = engine.write_report(evaluation, adapt_info)
    return report if engine.is_main else None
