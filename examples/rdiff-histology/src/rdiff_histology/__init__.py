"""rdiff plugin: the ``histology`` modality (stained tissue slides, e.g. H&E or immunohistochemistry).

This module is what the ``rdiff`` entry point names, so rdiff imports it at start-up: it stays light (no
numpy, no torch). The modality and its dependencies load only when ``build`` is called.

Besides the modality, it shows how a plugin adds a command-line option and observes runs: ``rdiff train
--modality histology --histology-log FILE`` appends one JSON line per finished run to ``FILE`` (a lab
notebook across runs). The option is added by :func:`rdiff_add_cli_options`, its value reaches the plugin
through :func:`rdiff_run_started`, :func:`rdiff_step_end` and :func:`rdiff_checkpoint_saved` note each
stage's last logged loss and the checkpoints written, and the line is written by :func:`rdiff_run_finished`.
"""

from __future__ import annotations

import json

from rdiff import UserError, hookimpl

LOGGED_COMMANDS = ("train", "reconstruct", "adapt")
_logs: dict[str, dict] = {}  # run directory -> the --histology-log file of that run and what it observed

SUMMARY = ("Stained tissue slides (RGB): embedded immunohistochemistry sample from scikit-image; stain variation, "
           "defocus, sensor noise and JPEG; PSNR, SSIM and stain-density error.")


@hookimpl
def rdiff_register_modalities(register):
    from rdiff_histology.config import HistologyConfig

    register("histology", build=_build, config=HistologyConfig, summary=SUMMARY)


def _build(config):
    from rdiff_histology.modality import Histology

    return Histology(config)


@hookimpl
def rdiff_add_cli_options(command, parser):
    if command in LOGGED_COMMANDS:
        parser.add_argument("--histology-log", metavar="FILE",
                            help="(rdiff-histology) append one JSON line per finished histology run to FILE: "
                                 "the run directory, backbone, adaptor and held-out scores")


@hookimpl
def rdiff_run_started(run_dir, config, cli_args):
    path = getattr(cli_args, "histology_log", None)
    if not path:
        return
    if config.modality != "histology":
        raise UserError(f"--histology-log applies to histology runs only; this run's modality is "
                        f"'{config.modality}'.")
    _logs[str(run_dir)] = {"file": path, "final_loss": {}, "checkpoints": 0}


def _observed() -> dict | None:
    """What the run in progress has observed (one run trains at a time in a process), if it is logged."""
    return next(reversed(_logs.values()), None)


@hookimpl
def rdiff_step_end(phase, stage, step, logs):
    seen = _observed()
    if seen is not None and "loss" in logs:
        seen["final_loss"][f"{phase}:{stage}"] = logs["loss"]


@hookimpl
def rdiff_checkpoint_saved(phase, stage, step, path):
    seen = _observed()
    if seen is not None:
        seen["checkpoints"] += 1


@hookimpl
def rdiff_run_finished(run_dir, report):
    seen = _logs.pop(str(run_dir), None)
    if seen is None:
        return
    line = {"run": str(run_dir), "backbone": report["backbone"], "adaptor": report["adaptor"],
            "preset": report["preset"], "enhanced": report.get("eval", {}).get("enhanced", {}),
            "final_loss": seen["final_loss"], "checkpoints": seen["checkpoints"]}
    with open(seen["file"], "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


@hookimpl
def rdiff_register_pretrained(register):
    """Shipped phase-1 weights: the built-in ``cnn-ae`` backbone's ``tiny`` preset trained on histology
    (``cnn-ae.tiny-histology``), a folder inside this package — a plugin may ship weights for a backbone it
    does not own."""
    from pathlib import Path

    register(Path(__file__).parent / "pretrained" / "tiny-histology")
