"""Typed run configuration: dataclasses in, YAML and ``--set key=value`` on top, unknown keys refused.

A run's configuration is built in layers, each a plain nested dict merged onto the previous one:
the dataclass defaults < the backbone's preset (registry.yaml) < a YAML file (``--config``) < CLI flags
< ``--set key=value``. The sections ``model``, ``adaptor_options`` and ``modality_options`` are checked
against the config dataclass the chosen plugin registered, so a misspelled key is refused with its full
dotted name and the closest valid key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rdiff.errors import UserError, did_you_mean


class _Loader(yaml.SafeLoader):
    """YAML as users mean it: only true/false are booleans (as in YAML 1.2). PyYAML follows YAML 1.1, where
    no, off, yes, on, y and n are booleans too, so ``--set train.mixed_precision=no`` arrived as False and a
    key ``no:`` as the key False. A key given twice is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = [(self.construct_object(k), k.start_mark.line + 1) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
        for key, line in (pair for i, pair in enumerate(keys) if pair[0] in [k for k, _ in keys[:i]]):
            raise yaml.MarkedYAMLError(problem=f"the key '{key}' is given twice (again on line {line})")
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))

# a bool field still takes the YAML 1.1 words, which now arrive as strings
_TRUE_WORDS = {"yes", "y", "on", "true"}
_FALSE_WORDS = {"no", "n", "off", "false"}


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 booleans (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


@dataclass
class TrainConfig:
    """How both phases train. Steps count optimiser updates."""

    image_size: int = 64  # side of the square training crops, in pixels
    resize: int | None = 256  # longest side training images are resized to before cropping (None: native)
    batch_size: int = 16  # phase-1 batch per process
    lr: float = 2e-4  # phase-1 learning rate
    warmup_steps: int = 0  # linear learning-rate warm-up at the start of every stage
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up: constant, or cosine decay to zero at the stage's last step (settles the weights, worth ~1 dB of phase-1 fidelity)
    steps: dict[str, int] = field(default_factory=lambda: {"autoencoder": 300, "denoiser": 300})  # per stage
    adapt_steps: int = 150  # phase-2 updates
    adapt_lr: float = 1e-4  # phase-2 learning rate (1e-3 cost ~1.3 dB at tiny scale)
    adapt_batch_size: int = 4  # phase-2 batch per process
    adapt_image_size: int | None = None  # side of phase-2 crops (None: image_size); larger crops let an adaptor learn illumination from more of the image, capped by the smallest image; at least the longest side (e.g. train.resize): whole images
    pairs: int = 20  # pairs made on the fly by the modality's degradation when no --pairs folder is given
    val_pairs: int = 8  # pairs held back to keep the best adaptation checkpoint (early stopping)
    val_every: int = 25  # phase-2 validation interval, in steps
    eval_every: int = 0  # held-out evaluation during training every N steps (0: only at the end)
    checkpoint_every: int = 100  # resumable checkpoint interval, in steps
    grad_accum: int = 1  # batches accumulated per optimiser step
    clip_grad: float = 1.0  # max gradient norm (0: off)
    ema_decay: float = 0.0  # EMA of trainable weights, used for evaluation and saved (0: off)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast precision (fp16 only on GPUs)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass to save memory
    train_base: bool = False  # phase 2 also fine-tunes the backbone's last stage, as the paper's code did
    bad_images: Literal["stop", "skip"] = "stop"  # an unreadable training image stops the run, or is skipped with a warning
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    cpu: bool = False  # force the CPU even when a GPU is present
    find_unused_parameters: bool = False  # DDP: set true for a plugin whose loss leaves trainable layers unused
    num_workers: int = 0  # data-loading worker processes per training process
    log_every: int = 10  # metrics.jsonl line interval, in steps


@dataclass
class EvalConfig:
    """Held-out evaluation: fixed crops, fixed seed, scored inside the region of interest."""

    crops: int = 64  # held-out degraded crops
    seed: int = 1234  # seed of the held-out crops, their degradations and sampling noise
    sample_steps: list[int] = field(default_factory=lambda: [10])  # DDIM step counts evaluated as 'ddimK'
    eta: float = 0.0  # DDIM eta: 0 is deterministic given the start noise (1.0 in the paper's code, kept by its preset; with a residual denoiser each step's fresh noise left a mottle, and more steps scored lower)
    path: str = "fast"  # the default enhancement path (reported as 'enhanced'): fast, ddimK, or sample (DDIM at the first of sample_steps)


@dataclass
class RunConfig:
    """One training run: which components, where the data is, and how to train."""

    backbone: str = "ldm-unet"  # backbone name (rdiff list backbones)
    modality: str = "fundus"  # modality name (rdiff list modalities)
    adaptor: str = "residual"  # phase-2 adaptor (rdiff list adaptors)
    preset: str = "tiny"  # named preset of the backbone (tiny, base, paper)
    seed: int = 0  # seeds data, initialisation and every training step
    data: str | None = None  # folder of unpaired images (default: the modality's embedded sample data)
    pairs: str | None = None  # folder with lq/ and hq/ of matching stems (default: degrade on the fly)
    out: str | None = None  # run directory (default: runs/<backbone>-<modality>-<preset>[-N])
    reconstruct_from: str | None = None  # phase-1 run this run adapts (set by `rdiff adapt --from RUN --out NEW`)
    model: dict[str, Any] = field(default_factory=dict)  # the backbone's options
    adaptor_options: dict[str, Any] = field(default_factory=dict)  # the adaptor's options
    modality_options: dict[str, Any] = field(default_factory=dict)  # the modality's options
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --- building dataclasses from nested dicts ------------------------------------------------------------------


def build(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, checking keys and value types."""
    if not isinstance(data or {}, dict):
        raise UserError(f"config key '{where}' must be a mapping, got {data!r}.")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise UserError(f"unknown config key '{dotted}'{did_you_mean(key, fields)}; "
                            f"valid keys here: {', '.join(fields)}.")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"config key '{where}' cannot be {value!r}.")
    if origin is Literal:
        if value not in args:
            raise UserError(f"config key '{where}' must be one of {', '.join(map(str, args))}, "
                            f"not {value!r}{did_you_mean(value, args)}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{where}' must be a list, not {value!r}.")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a mapping, not {value!r}.")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise UserError(f"config key '{where}' must be true or false, not {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{where}' must be a whole number, not {value!r}.")
    if tp is float:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads '2e-4' (no dot) as a string; a user means the number
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):  # nan or inf would train or sample garbage
            raise UserError(f"config key '{where}' must be a {'finite ' * (number is not None)}number, not {value!r}.")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{where}' must be a string, not {value!r}.")
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain YAML-safe data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --- layering --------------------------------------------------------------------------------------------


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``top`` onto ``base`` (new dict; mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.latent_channels=4"]`` -> a nested dict; values parse as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set takes key=value, got '{item}'.")
        key, raw = item.split("=", 1)
        try:
            value = safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set key '{key}' conflicts with another --set of '{part}'.")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file '{path}' does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not UTF-8: before any run began
        raise UserError(f"config file '{path}' cannot be read as UTF-8 text ({getattr(exc, 'reason', None) or exc.strerror}).") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values.")
    return data


def check_mix(probabilities: dict[str, float], kinds: tuple[str, ...]) -> None:
    """Refuse a degradation mix (``degradation.mix_probability``) that names an unknown degradation or holds
    a chance outside [0, 1]: the check every modality with a default mix of degradations makes."""
    for kind, chance in probabilities.items():
        if kind not in kinds:
            raise UserError(f"config key 'degradation.mix_probability.{kind}' names no degradation; "
                            f"choose from {', '.join(kinds)}.")
        if not 0 <= chance <= 1:
            raise UserError(f"config key 'degradation.mix_probability.{kind}' must be a probability, not {chance}.")
