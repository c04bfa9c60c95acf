"""report.json: what a finished run reports (held-out evaluation, parameter counts, times)."""

from __future__ import annotations

from typing import Any


def parameter_counts(backbone: Any, train_base: bool) -> dict[str, int]:
    """``total`` (base and adaptor), ``trainable`` (what phase 2 trains) and ``base`` parameters."""
    total = sum(p.numel() for p in backbone.parameters())
    adaptor = backbone.adaptor
    adaptor_params = adaptor.trainable_parameters() if adaptor is not None else []
    inside = {id(p) for p in backbone.parameters()}
    extra = sum(p.numel() for p in adaptor_params if id(p) not in inside)  # LoRA lives inside the base
    trainable = sum(p.numel() for p in adaptor_params)
    if train_base:
        trainable += sum(p.numel() for p in backbone.finetune_parameters())
    return {"total": total + extra, "trainable": trainable, "base": total}


def build_report(cfg: Any, backbone: Any, evaluation: dict[str, Any] | None, adapt_info: dict[str, Any] | None,
                 times: dict[str, float]) -> dict[str, Any]:
    """The content of report.json for a run of configuration ``cfg``."""
    report = {
        "backbone": cfg.backbone, "modality": cfg.modality,
        "adaptor": cfg.adaptor if backbone.adaptor is not None else None, "preset": cfg.preset,
        "params": parameter_counts(backbone, cfg.train.train_base),
        "eval": evaluation or {},
        "time_s": {"reconstruct": times.get("reconstruct", 0.0), "adapt": times.get("adapt", 0.0),
                   "evaluate": times.get("evaluate", 0.0)},
    }
    if adapt_info:
        report["adapt"] = adapt_info
    if cfg.reconstruct_from:
        report["reconstruct_from"] = cfg.reconstruct_from
    return report
