"""report.json: what a finished run reports (held-out evaluation, parameter counts, times, those of a
resumed run carried over), and the table the CLI prints from it."""

from __future__ import annotations

import json
from pathlib import Path
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


def carry_times(run_dir: str | Path, times: dict[str, float]) -> dict[str, float]:
    """Training times of a resumed run: what report.json already recorded plus what this resume spent.
    Evaluation is measured anew (it runs again in full)."""
    report = Path(run_dir) / "report.json"
    try:
        before = json.loads(report.read_text(encoding="utf-8")).get("time_s") or {} if report.is_file() else {}
    except (OSError, ValueError, AttributeError):
        before = {}
    out = dict(times)
    for phase, seconds in before.items():
        if phase != "evaluate" and isinstance(seconds, (int, float)):
            out[phase] = round(float(seconds) + float(times.get(phase, 0.0)), 1)
    return out


def format_eval_table(ev: dict[str, Any]) -> str:
    rows = [("input (degraded)", ev.get("input", {}))]
    if "reconstruct_only" in ev:
        rows.append((f"reconstruct-only {ev.get('reconstruct_only_path', 'fast')}", ev["reconstruct_only"]))
    rows += [(f"{'adapted ' if 'reconstruct_only' in ev else ''}{name}{' *' if name == ev.get('default_path') else ''}", m)
             for name, m in ev.get("paths", {}).items()]
    width = {k: max(12, len(k) + 2) for k in rows[0][1] if k != "by_type"}
    pad = max(26, *(len(label) + 2 for label, _ in rows))
    lines = [" " * pad + "".join(f"{k:>{w}}" for k, w in width.items())]
    for label, metrics in rows:
        lines.append(f"{label:<{pad}}" + "".join(f"{metrics.get(k, float('nan')):>{w}.4f}" for k, w in width.items()))
    count = ev.get("crops", ev.get("images"))
    lines.append(f"(* default path; {count} held-out {'crops' if 'crops' in ev else 'images'}; scored inside the region of interest)")
    return "\n".join(lines)
