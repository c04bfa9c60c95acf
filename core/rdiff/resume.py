"""What ``--resume`` does with ``--set``, ``--data``, ``--pairs``, ``--config`` and the other flags.

A resumed run continues from its checkpoints, which were made with the values in its config.yaml. Some
keys can change without making those checkpoints wrong, and a user resuming often does so precisely to
fix one of them; the others would silently mix two configurations in one run. So ``--resume``:

- applies the keys in :data:`SAFE` (the pairs folder, step counts of what has not finished, evaluation and
  bookkeeping settings), prints them and records them in config.yaml as a comment line with the date;
- refuses, in one sentence naming each key, any other change (the model, the crop size, learning rates,
  the seed, ...): start a new run, or re-adapt with ``rdiff adapt --from RUN --out NEW``;
- ignores a flag that repeats the run's own value.

Its report adds this resume's training time to the run's own (:func:`rdiff.report.carry_times`).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from rdiff.errors import UserError

_MISSING = object()

# keys a resume may change: prefixes end with "."
SAFE = ("pairs", "train.adapt_steps", "train.steps.", "eval.", "train.val_every", "train.checkpoint_every",
        "train.log_every", "train.eval_every", "train.num_workers", "train.max_bad_steps", "train.bad_images")
IGNORED = ("out", "reconstruct_from")  # where the run is: set by --out / --from, not a training value
# which plugins and preset: their options were resolved into config.yaml and cannot be swapped afterwards
COMPONENTS = ("backbone", "modality", "adaptor", "preset")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": {"autoencoder": 4}}}`` -> ``{"train.steps.autoencoder": 4}`` (lists stay whole)."""
    if not isinstance(data, dict) or (prefix and not data):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE)


def _phase1_done(run_dir: Path, saved: dict[str, Any]) -> list[str]:
    from rdiff.run import stages_done

    source = Path(saved["reconstruct_from"]) if saved.get("reconstruct_from") else run_dir
    try:
        return stages_done(source / "reconstruct")
    except (OSError, ValueError, KeyError):
        return []


def apply(run_dir: str | Path, saved: dict[str, Any], override: dict[str, Any]) -> tuple[Any, str | None]:
    """The configuration to resume with (a RunConfig) and the note describing what changed (``None`` when
    nothing did). Raises UserError naming every key a resume may not change."""
    from rdiff.config import RunConfig, build, merge, to_dict
    from rdiff.run import holds_results

    run_dir = Path(run_dir)
    before = build(RunConfig, saved)
    if not override:
        return before, None
    after = build(RunConfig, merge(to_dict(before), override))
    old, new = flatten(to_dict(before)), flatten(to_dict(after))
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k, _MISSING) != new.get(k, _MISSING) and k not in IGNORED]
    if not changed:
        return before, None
    done = _phase1_done(run_dir, saved)
    stages = set((saved.get("train") or {}).get("steps") or {})
    finished = bool(saved.get("reconstruct_from")) or (bool(done) and stages <= set(done))  # another run's: done
    untrained = not holds_results(run_dir)  # config.yaml only, as a run stopped before its first checkpoint
    refused = []
    for key in changed:
        if untrained and key not in COMPONENTS:
            continue  # nothing was trained with the old values yet: every value may still change
        if key.startswith("train.steps.") and key[len("train.steps."):] in done:
            refused.append(f"{key} (stage '{key[len('train.steps.'):]}' has finished)")
        elif key == "data" and finished:
            continue  # phase 1 is over: the folder now feeds only on-the-fly pairs and the evaluation
        elif not _is_safe(key):
            refused.append(key)
    if refused:
        raise UserError(f"--resume cannot change {', '.join(refused)} in '{run_dir}': its checkpoints were made "
                        f"with the values in its config.yaml; start a new run with another --out, or re-adapt "
                        f"with `rdiff adapt --from {run_dir} --out NEW`.")
    parts = [f"{k}: {_show(old.get(k, _MISSING))} -> {_show(new.get(k, _MISSING))}" for k in changed]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return after, f"--resume on {stamp} changed {'; '.join(parts)}"


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(unset)"
    return "null" if value is None else str(value)

