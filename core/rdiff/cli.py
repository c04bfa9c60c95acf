"""The ``rdiff`` command line. Each subcommand parses its flags, builds a configuration and calls the engine.

Exit codes: 0 success, 2 bad usage or bad input (one sentence, no traceback), 1 internal error.
This module imports no torch at start-up: ``rdiff --help`` and ``rdiff plugins`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from contextlib import suppress
from pathlib import Path
from typing import Any

from rdiff import __version__
from rdiff.errors import TrainingStopped, UserError, describe_os_error
from rdiff.report import format_eval_table

RUN_FLAGS = ("backbone", "modality", "adaptor", "preset", "data", "pairs", "seed")  # flags that are config keys


# --- configuration from flags ---------------------------------------------------------------------------------


def number(kind: type = int, at_least: float = 0, positive: bool = False) -> Any:
    """``type=`` of every numeric option of every command (tests/test_options.py checks): a finite ``kind`` of at
    least ``at_least`` (above 0 if ``positive``); argparse refuses nan, inf or -3 naming the option, before any work."""
    def parse(text: str) -> Any:
        with suppress(ValueError):
            if math.isfinite(value := kind(text)) and value >= at_least and (value > 0 or not positive):
                return value
        bound = "above 0" if positive else f"of at least {at_least}"
        raise argparse.ArgumentTypeError(f"expected a {'whole' if kind is int else 'finite'} number {bound}, not '{text}'")
    parse.kind, parse.at_least, parse.positive = kind, at_least, positive  # for the test that walks every option
    return parse


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="backbone name (rdiff list backbones); default ldm-unet")
    p.add_argument("--modality", help="modality name (rdiff list modalities); default fundus")
    p.add_argument("--adaptor", help="phase-2 adaptor (rdiff list adaptors); default residual")
    p.add_argument("--preset", help="named preset of the backbone (tiny, base, paper); default tiny")
    p.add_argument("--data", help="folder of unpaired images (default: the modality's embedded sample data)")
    p.add_argument("--pairs", help="folder with lq/ and hq/ of matching file stems (default: degrade on the fly)")
    p.add_argument("--out", help="run directory (default: runs/<backbone>-<modality>-<preset>, numbered if taken)")
    p.add_argument("--seed", type=number(int), help="random seed (default 0)")
    _add_common_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def _add_common_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML file of configuration keys (see docs/configuration.md)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one configuration key, e.g. --set train.adapt_steps=100 (repeatable)")


def _flags(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _numbered(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _load_yaml_layer(args: argparse.Namespace) -> dict[str, Any]:
    from rdiff.config import load_yaml

    return load_yaml(args.config) if args.config else {}


# --- commands -------------------------------------------------------------------------------------------------


def _resume_overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """What the flags of a ``--resume`` ask to change, as one layer (see rdiff.resume)."""
    from rdiff.config import merge, parse_set

    return merge(merge(_load_yaml_layer(args), _flags(args, names)), parse_set(args.set))


def train_config(args: argparse.Namespace, phases: tuple[str, ...] = ("reconstruct", "adapt")
                 ) -> tuple[Any, tuple[str, ...]]:
    """The resolved configuration of a new ``rdiff train`` / ``reconstruct`` run from its flags, and the phases
    it runs (``--pretrained``: phase 2 only, on the shipped phase 1)."""
    from rdiff.config import parse_set
    from rdiff.registry import resolve_config

    layers = [_load_yaml_layer(args), _flags(args, RUN_FLAGS), parse_set(args.set)]
    config = resolve_config(layers)
    if getattr(args, "pretrained", False):
        from rdiff import pretrained as shipped

        # the checkpoint's phase-1 model section under the user's layers: a key the user changes is refused
        # by name; phase 2's keys come from the preset
        checkpoint = shipped.find(config.backbone, config.preset, config.modality)
        config = resolve_config([{"model": shipped.phase1_model(checkpoint)}, *layers,
                                 {"reconstruct_from": str(checkpoint.directory)}])
        shipped.check_model(checkpoint, config.model)
        phases = ("adapt",)
    return config, phases


def cmd_train(args: argparse.Namespace, phases: tuple[str, ...] = ("reconstruct", "adapt")) -> int:
    from rdiff import resume
    from rdiff.config import load_yaml
    from rdiff.engine import run

    out = Path(args.out) if args.out else None
    note = None
    if args.resume:
        if out is None or not (out / "config.yaml").is_file():
            raise UserError(f"--resume needs --out pointing at an existing run directory; "
                            f"'{out}' has no config.yaml." if out else "--resume needs --out RUN.")
        # flags apply when they are safe to change mid-run, and are refused by name otherwise
        config, note = resume.apply(out, load_yaml(out / "config.yaml"), _resume_overrides(args, RUN_FLAGS))
    else:
        config, phases = train_config(args, phases)
        if out is None:
            out = Path(config.out or _numbered(Path("runs") / f"{config.backbone}-{config.modality}-{config.preset}"))
        if (out / "config.yaml").exists():
            raise UserError(f"run directory '{out}' already holds a run; pass --resume to continue it or "
                            f"choose another --out.")
        config.out = args.out = str(out)  # args.out: where a failed write finds the checkpoints kept
    report = run(config, out, phases=phases, resume=args.resume, cli_args=args, note=note)
    _print_summary(out, report)
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    return cmd_train(args, phases=("reconstruct",))


def cmd_adapt(args: argparse.Namespace) -> int:
    from rdiff import pretrained as shipped
    from rdiff import resume
    from rdiff.config import RunConfig, build, load_yaml, merge, parse_set, to_dict
    from rdiff.engine import run
    from rdiff.registry import resolve_config
    from rdiff.run import holds_results

    checkpoint = shipped.get_pretrained(args.source) if args.source.startswith(shipped.PREFIX) else None
    if checkpoint:  # shipped weights live in the installed package: the adapted run is always a new directory
        source = checkpoint.directory
        args.out = args.out or str(_numbered(Path("runs") / f"{checkpoint.name}-adapted"))
    else:
        source = Path(args.source)
    if not (source / "config.yaml").is_file():
        raise UserError(f"--from '{source}' is not an rdiff run directory (it has no config.yaml).")
    if checkpoint:  # adapted as `rdiff train --pretrained` adapts it
        base = to_dict(resolve_config([{"backbone": checkpoint.backbone, "preset": checkpoint.preset,
                                        "modality": checkpoint.modality, "model": shipped.phase1_model(checkpoint)}]))
    else:
        base = to_dict(build(RunConfig, load_yaml(source / "config.yaml")))
    out = Path(args.out) if args.out else source
    note = None
    if args.resume and (out / "config.yaml").is_file() and args.out:
        config, note = resume.apply(out, load_yaml(out / "config.yaml"),
                                    _resume_overrides(args, ("adaptor", "data", "pairs", "seed")))
    else:
        flags = _flags(args, ("adaptor", "data", "pairs", "seed"))
        if "adaptor" in flags and flags["adaptor"] != base["adaptor"]:
            base["adaptor_options"] = {}  # the old adaptor's options mean nothing to the new one
        layers = [merge(base, _load_yaml_layer(args)), flags, parse_set(args.set)]
        if args.out:
            if (out / "config.yaml").exists():
                raise UserError(f"run directory '{out}' already holds a run; choose another --out or pass --resume.")
            # phase 1 is referenced, not copied: one reconstruction serves many adaptations
            layers.append({"reconstruct_from": str((Path(base["reconstruct_from"]) if base.get("reconstruct_from")
                                                    else source).resolve()), "out": str(out)})
        elif not args.resume and holds_results(source / "adapt"):  # a finished result is replaced only if asked
            raise UserError(f"run '{source}' already holds a phase 2 in '{source / 'adapt'}'; adapt into a new run "
                            f"directory with --out NEW_RUN, or continue this one with --resume.")
        config = resolve_config(layers)
        if checkpoint:  # a model key the shipped weights were not trained with is named before anything loads
            shipped.check_model(checkpoint, config.model)
    report = run(config, out, phases=("adapt",), resume=args.resume, cli_args=args, note=note)
    _print_summary(out, report)
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    from rdiff.enhance import enhance_files
    from rdiff.run import Run

    run = Run.load(args.run, reconstruct_only=args.reconstruct_only)
    return enhance_files(run, args.inputs, args.out, path=args.path, seed=args.seed, tile=args.tile,
                         overlap=args.overlap, batch=args.batch, device=args.device, dtype=args.dtype,
                         preserve_color=args.preserve_color, compare=args.compare, suffix=args.suffix,
                         steps=args.steps, eta=args.eta)  # sampling settings, for the backbone to read


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rdiff.run import Run

    if args.data and args.pairs:
        raise UserError("give --data or --pairs, not both.")
    run = Run.load(args.run, reconstruct_only=args.reconstruct_only)
    result = run.evaluate(data=args.data, pairs=args.pairs, crops=args.crops,
                          paths=args.paths.split(",") if args.paths else None)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_eval_table(result))
    return 0


# --- output ---------------------------------------------------------------------------------------------------


def _print_summary(out: Path, report: dict[str, Any] | None) -> None:
    if report is None:  # not the main process of a distributed run
        return
    ev = report.get("eval") or {}
    print(f"\nrun directory: {out}")
    if ev:
        print(format_eval_table(ev))
    p = report.get("params", {})
    times = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in (report.get("time_s") or {}).items())
    print(f"parameters: {p.get('total', 0):,} total, {p.get('trainable', 0):,} trained in phase 2; "
          f"time: {times or 'none'}")
    print(f"details: {out / 'report.json'}")


# --- the parser -----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, no usage block above it (bad input: exit 2)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from rdiff.plugins import plugins

    parser = _Parser(
        prog="rdiff", description="Enhance medical images by reconstruction, then adaptation.",
        epilog="Quick start: rdiff train --backbone ldm-unet --modality fundus --preset tiny")
    parser.add_argument("--version", action="version", version=f"rdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="phase 1 (reconstruct) then phase 2 (adapt), then evaluate")
    _add_run_flags(p)
    p.add_argument("--pretrained", action="store_true",
                   help="skip phase 1: adapt the shipped phase-1 weights of this backbone, preset and modality "
                        "(rdiff list pretrained)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("reconstruct", help="phase 1 only: self-supervised reconstruction on unpaired images")
    _add_run_flags(p)
    p.set_defaults(handler=cmd_reconstruct)

    p = sub.add_parser("adapt", help="phase 2 only, from a phase-1 run")
    p.add_argument("--from", dest="source", required=True, metavar="RUN",
                   help="the run whose phase 1 to adapt, or pretrained:NAME for shipped weights (rdiff list pretrained)")
    p.add_argument("--adaptor", help="phase-2 adaptor (default: the run's)")
    p.add_argument("--data", help="folder of clean images to degrade into pairs on the fly (default: the run's, "
                                  "or the modality's embedded sample for shipped weights)")
    p.add_argument("--pairs", help="folder with lq/ and hq/ (default: degrade on the fly)")
    p.add_argument("--out", help="new run directory referencing RUN's phase 1 (default: write RUN/adapt/)")
    p.add_argument("--seed", type=number(int), help="random seed (default: the run's)")
    _add_common_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue phase 2 from its last checkpoint")
    p.set_defaults(handler=cmd_adapt)

    p = sub.add_parser("enhance", help="enhance image files, folders or globs with a trained run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--path", help="the backbone's enhancement path: fast (adapted autoencoder alone), sample "
                                  "(DDIM) or a name rdiff evaluate reports, e.g. ddim10 (default: the run's preset)")
    p.add_argument("--steps", type=number(int, 1), help="DDIM steps for --path sample")
    p.add_argument("--eta", type=number(float), help="DDIM eta (default: the run's; 0: deterministic given the seed)")
    p.add_argument("--seed", type=number(int), default=0, help="seed of the sampling noise (default 0)")
    p.add_argument("--tile", type=number(int, 1), help="tile side in pixels (default: the run's)")
    p.add_argument("--overlap", type=number(int), help="tile overlap in pixels")
    p.add_argument("--batch", type=number(int, 1), default=1, help="tiles per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="inference precision (float16 on GPUs only)")
    p.add_argument("--preserve-color", action="store_true", help="keep the input's low-frequency colour")
    p.add_argument("--compare", action="store_true", help="also write a side-by-side before/after image")
    p.add_argument("--suffix", help="append this to each output file's stem, e.g. _enh (a.png -> a_enh.png)")
    p.add_argument("--reconstruct-only", action="store_true",
                   help="use the phase-1 model alone, without the run's adaptor (e.g. when the adaptor is lost)")
    p.set_defaults(handler=cmd_enhance)

    p = sub.add_parser("evaluate", help="score a run on held-out data or real pairs")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", help="folder of clean held-out images: each scored whole at the run's working scale, "
                                  "degraded by the run's modality (a folder split by subject: rdiff bench --data)")
    p.add_argument("--pairs", help="folder with lq/ and hq/: real pairs, scored whole at native resolution")
    p.add_argument("--crops", type=number(int, 1),
                   help="number of embedded held-out crops (default: the run's eval.crops; not used with --data or --pairs)")
    p.add_argument("--paths", help="comma-separated paths to score (default: all), e.g. fast,ddim10")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--reconstruct-only", action="store_true", help="score the phase-1 model alone, without the adaptor")
    p.set_defaults(handler=cmd_evaluate)

    # every other command comes from a plugin: the built-in `list`, `bench`, `scaffold` and `degrade` plugins
    # add `rdiff list`/`plugins`, `bench`, `new-plugin` and `degrade` exactly as a third-party plugin adds its own
    hook = plugins().pm.hook
    hook.rdiff_register_commands(subparsers=sub)
    for name, sp in sub.choices.items():
        hook.rdiff_add_cli_options(command=name, parser=sp)
    return parser


# --- how a failure reaches a user -----------------------------------------------------------------------------


def short_warnings() -> None:
    """Show rdiff's own warnings as ``rdiff: warning: <message>``: a user needs the message, not the source
    line of the module that issued it. Other libraries' warnings keep Python's usual format."""
    original = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # noqa: ANN001 - warnings' signature
        parts = Path(str(filename)).parts
        if any(p == "rdiff" or p.startswith("rdiff_") for p in parts) and issubclass(category, UserWarning):
            return f"rdiff: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    if getattr(original, "__module__", "") != __name__:  # install once per process
        warnings.formatwarning = formatwarning


TRAINING = ("train", "reconstruct", "adapt", "bench")  # commands that leave a checkpoint to resume from


def interrupted_message(command: str | None) -> str:
    """What an interruption (Ctrl-C) leaves behind, for the command that was running."""
    if command in TRAINING:
        return "interrupted; the last checkpoint is kept (resume with --resume)"
    if command in ("enhance", "degrade"):
        return ("interrupted; every file already written is complete (files appear under their final names "
                "only when finished), the others were not written")
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    from rdiff.plugins import plugins

    short_warnings()
    command = args = None
    try:
        plugins().warn_broken()
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a reader that stopped early (`| grep -q`, `| head`) is met here, inside the handler below
        return code
    except BrokenPipeError:  # the reader had what it wanted: not an error, and nothing left to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
        return 0
    except UserError as exc:
        for line in str(exc).splitlines() or [""]:  # several problems: one sentence per line
            print(f"rdiff: error: {line}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk, a read-only folder: the user's to fix, not a bug
        run_dir = getattr(args, "out", None) or getattr(args, "source", None)  # a failure before any checkpoint keeps none
        kept = command in TRAINING and run_dir and any(Path(run_dir).rglob("checkpoint*"))
        print(f"rdiff: error: {describe_os_error(exc)}" + " The last complete checkpoint is kept (resume with --resume)."
              * bool(kept), file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"rdiff: {interrupted_message(command)}", file=sys.stderr)
        return 130
    except TrainingStopped as exc:
        print(f"rdiff: stopped: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
