"""``rdiff new-plugin NAME --kind {backbone,adaptor,modality}``: write a plugin package that works out of the box.

The package is laid out the way rdiff's own plugins and ``examples/rdiff-histology`` are::

    rdiff-NAME/
      pyproject.toml            the ``rdiff`` entry point: NAME = "rdiff_NAME"
      README.md
      src/rdiff_NAME/
        __init__.py             the hook (light: no torch at import) and, for a backbone, its presets
        config.py               the options dataclass, every field with a default and a comment
        <kind>.py               a small working implementation to replace with your own
      tests/test_NAME.py        rdiff.testing's contract for the role

and passes its own contract tests as generated (``pip install -e ./rdiff-NAME && pytest rdiff-NAME``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from rdiff.errors import UserError

KINDS = ("backbone", "adaptor", "modality")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class Names:
    """Every spelling of a plugin's name: ``stain-norm`` -> ``rdiff-stain-norm``, ``rdiff_stain_norm``,
    ``StainNorm``."""

    component: str  # the registered name and entry-point name, e.g. stain-norm
    distribution: str  # e.g. rdiff-stain-norm
    package: str  # e.g. rdiff_stain_norm
    cls: str  # e.g. StainNorm

    @classmethod
    def of(cls, name: str) -> Names:
        component = re.sub(r"^rdiff[-_]", "", name.strip())
        if not _NAME.match(component):
            raise UserError(f"plugin name '{name}' must be lower-case letters and digits separated by '-' or '_', "
                            f"starting with a letter (e.g. stain-norm).")
        words = re.split(r"[-_]", component)
        return cls(component=component, distribution="rdiff-" + "-".join(words),
                   package="rdiff_" + "_".join(words), cls="".join(w.capitalize() for w in words))


def write_plugin(name: str, kind: str, out: str | Path = ".") -> Path:
    """Write the package for a new ``kind`` plugin called ``name`` into ``out``; returns its folder."""
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, not '{kind}'.")
    names = Names.of(name)
    root = Path(out) / names.distribution
    if root.exists() and any(root.iterdir()):
        raise UserError(f"'{root}' already exists and is not empty; choose another --out or name.")
    for relative, text in files(kind, names).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def files(kind: str, names: Names) -> dict[str, str]:
    """Relative path -> content of every file of the package."""
    module = {"backbone": "backbone.py", "adaptor": "adaptor.py", "modality": "modality.py"}[kind]
    templates = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{names.package}/__init__.py": INIT[kind],
        f"src/{names.package}/config.py": CONFIG[kind],
        f"src/{names.package}/{module}": IMPLEMENTATION[kind],
        f"tests/test_{names.package.removeprefix('rdiff_')}.py": TESTS[kind],
    }
    return {path: _fill(text, kind, names) for path, text in templates.items()}


def _fill(template: str, kind: str, names: Names) -> str:
    # plain replacement, not str.format: the templates are Python full of braces
    for placeholder, value in (("__DIST__", names.distribution), ("__PACKAGE__", names.package),
                               ("__CLASS__", names.cls), ("__NAME__", names.component), ("__KIND__", kind)):
        template = template.replace(placeholder, value)
    return template


# --- the command ---------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rdiff new-plugin`` on the CLI's subparsers."""
    p = subparsers.add_parser("new-plugin", help="write a new plugin package (backbone, adaptor or modality) "
                                                 "that passes its contract tests")
    p.add_argument("name", help="the component's name, e.g. stain-norm (package rdiff_stain_norm)")
    p.add_argument("--kind", required=True, choices=KINDS, help="the role the plugin adds")
    p.add_argument("--out", default=".", help="folder to write rdiff-NAME/ into (default: the current folder)")
    p.set_defaults(handler=cmd_new_plugin)
    return p


def cmd_new_plugin(args: argparse.Namespace) -> int:
    root = write_plugin(args.name, args.kind, args.out)
    names = Names.of(args.name)
    article = "an" if args.kind == "adaptor" else "a"
    print(f"wrote the {args.kind} plugin '{names.component}' to {root}/\nnext:\n"
          f"  pip install -e {root}\n"
          f"  rdiff plugins       # lists {names.component}\n"
          f"  pytest {root}       # rdiff.testing's contract for {article} {args.kind}")
    return 0


# --- templates: shared ---------------------------------------------------------------------------------------

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "An rdiff plugin adding the __KIND__ '__NAME__'."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["rdiff"]

[project.optional-dependencies]
test = ["pytest>=8"]

# rdiff finds plugins through this entry-point group: name = the plugin, value = the module with the hooks.
[project.entry-points.rdiff]
__NAME__ = "__PACKAGE__"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''\
# __DIST__

An rdiff plugin adding the __KIND__ `__NAME__`.

```bash
pip install -e .
rdiff plugins                 # lists __NAME__
pytest                        # rdiff.testing's contract tests
```

- `src/__PACKAGE__/__init__.py` registers the component (the hook; keep it free of heavy imports).
- `src/__PACKAGE__/config.py` holds its options: `--set` keys, each with a default and a comment.
- The implementation is a small working example: replace it with yours and keep the tests passing.
'''

# --- templates: modality -------------------------------------------------------------------------------------

INIT_MODALITY = '''\
"""rdiff plugin: the ``__NAME__`` modality.

rdiff imports this module at start-up, so it stays light: numpy and scipy load only when the modality is built.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = "__NAME__ images: synthetic embedded samples, Gaussian blur and noise, PSNR and SSIM."


@hookimpl
def rdiff_register_modalities(register):
    from __PACKAGE__.config import __CLASS__Config

    register("__NAME__", build=_build, config=__CLASS__Config, summary=SUMMARY)


def _build(config):
    from __PACKAGE__.modality import __CLASS__

    return __CLASS__(config)
'''

CONFIG_MODALITY = '''\
"""Options of the ``__NAME__`` modality (``modality_options.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rdiff import UserError


@dataclass
class __CLASS__Config:
    """__CLASS__ images; the region of interest is the whole image."""

    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 2.0])  # range of the Gaussian blur's sigma, px
    noise_sigma: list[float] = field(default_factory=lambda: [0.01, 0.05])  # range of the added noise's standard deviation
    sample_size: int = 128  # side of the embedded synthetic images, px

    def __post_init__(self) -> None:
        for key in ("blur_sigma", "noise_sigma"):
            low, high = getattr(self, key)
            if not 0 <= low <= high:
                raise UserError(f"config key '{key}' must be a range [low, high] with 0 <= low <= high.")
        if self.sample_size < 64:
            raise UserError(f"config key 'sample_size' must be at least 64, not {self.sample_size}.")
'''

MODALITY = '''\
"""The ``__NAME__`` modality: a data domain for rdiff (see rdiff.Modality for the conventions).

Images are ``H×W×C`` float32 in [0, 1]; the roi is a bool ``H×W`` mask. Replace the synthetic samples with
your own embedded data and the degradation with your domain's; ``rdiff.testing.ModalityContract`` checks
what the engine relies on.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rdiff import Modality, UserError
from __PACKAGE__.config import __CLASS__Config

SEEDS = {"train": (0, 1, 2, 3), "heldout": (100, 101)}  # different seeds: the splits never share an image


class __CLASS__(Modality):
    name = "__NAME__"
    channels = 3

    def __init__(self, config: __CLASS__Config | None = None):
        super().__init__(config if config is not None else __CLASS__Config())

    def sample_images(self, split: str) -> list[np.ndarray]:
        """Synthetic images (smooth background and blob-like cells), the same for every call."""
        if split not in SEEDS:
            raise UserError(f"unknown split '{split}'; use 'train' or 'heldout'.")
        return [_synthetic(seed, self.config.sample_size, self.channels) for seed in SEEDS[split]]

    def degrade(self, image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Gaussian blur then Gaussian noise; every value drawn from ``rng`` and returned."""
        sigma = float(rng.uniform(*self.config.blur_sigma))
        noise = float(rng.uniform(*self.config.noise_sigma))
        out = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
        out = out + rng.normal(0.0, noise, size=image.shape)
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        out = np.where(roi[..., None], out, image)  # pixels outside the roi stay as they are
        return out, {"types": ["blur", "noise"], "blur_sigma": round(sigma, 4), "noise_sigma": round(noise, 5)}


def _synthetic(seed: int, size: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    background = ndimage.gaussian_filter(rng.random((size, size, channels)), sigma=(size / 8, size / 8, 0))
    cells = np.zeros((size, size), dtype=np.float64)
    cells[rng.integers(0, size, 40), rng.integers(0, size, 40)] = 1.0
    cells = ndimage.gaussian_filter(cells, sigma=2.5)
    image = 0.3 + 0.4 * (background - background.min()) / np.ptp(background)
    image = image + 0.5 * (cells / cells.max())[..., None] * rng.uniform(0.5, 1.0, channels)
    return np.clip(image, 0.0, 1.0).astype(np.float32)
'''

TESTS_MODALITY = '''\
"""rdiff's contract for a modality: what the engine relies on (data, roi, degradation, metrics, files)."""

from rdiff.testing import ModalityContract


class Test__CLASS__(ModalityContract):
    modality = "__NAME__"
    options = {}  # modality_options to test with
'''

# --- templates: backbone -------------------------------------------------------------------------------------

INIT_BACKBONE = '''\
"""rdiff plugin: the ``__NAME__`` backbone.

rdiff imports this module at start-up, so it stays light: torch loads only when the backbone is built.
A backbone brings its presets: partial run configurations (``model``, ``train``, ``eval``) chosen with
``--preset``.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = "a small convolutional autoencoder: one-shot D(E'(lq)) enhancement"
PRESETS = {
    "tiny": {  # a CPU run of a few minutes
        "model": {"width": 16, "blocks": 1},
        "train": {"image_size": 64, "resize": 256, "batch_size": 8, "steps": {"autoencoder": 300},
                  "adapt_steps": 100},
        "eval": {"path": "fast"},
    },
    "base": {  # one GPU
        "model": {"width": 64, "blocks": 2},
        "train": {"image_size": 256, "resize": 512, "batch_size": 8, "steps": {"autoencoder": 20000},
                  "adapt_steps": 1000, "adapt_lr": 5.0e-5},
        "eval": {"path": "fast"},
    },
}


@hookimpl
def rdiff_register_backbones(register):
    from __PACKAGE__.config import __CLASS__Config

    register("__NAME__", build=_build, config=__CLASS__Config, summary=SUMMARY,
             capabilities=("latent", "lora_targets"), presets=PRESETS)


def _build(config, channels):
    from __PACKAGE__.backbone import __CLASS__

    return __CLASS__(config, channels)
'''

CONFIG_BACKBONE = '''\
"""Options of the ``__NAME__`` backbone (``model.*``; the presets in __init__.py set some of them)."""

from __future__ import annotations

from dataclasses import dataclass

from rdiff import UserError


@dataclass
class __CLASS__Config:
    """A convolutional autoencoder: two levels of residual blocks, a latent image at half resolution."""

    width: int = 32  # channels of the first level (the second has twice as many)
    blocks: int = 2  # residual blocks per level of the encoder and of the decoder
    latent_channels: int = 4  # channels of the latent image
    l1_weight: float = 1.0  # phase 1: weight of the pixel L1 loss inside the roi

    def __post_init__(self) -> None:
        if self.width < 8 or self.width % 8:
            raise UserError(f"config key 'model.width' must be a multiple of 8, not {self.width}.")
        if self.blocks < 1 or self.latent_channels < 1:
            raise UserError("config keys 'model.blocks' and 'model.latent_channels' must be at least 1.")
'''

BACKBONE = '''\
"""The ``__NAME__`` backbone (see rdiff.Reconstructor for the conventions).

- Phase 1, stage ``autoencoder``: reconstruct clean images (L1 inside the roi).
- Phase 2: the adaptation loss ``|E(hq) - E'(lq)| + |E(hq) - E'(hq)|`` on latents, ``E`` the frozen encoder and
  ``E'`` the encoder with the adaptor on.
- Enhancement: the one path ``fast``, ``D(E'(lq))``.

Adaptors act at the end of the residual branch of every encoder block (``adaptation_targets``); LoRA may
wrap the blocks' convolutions (``lora_target_modules``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdiff import AdaptationTarget, Reconstructor, UserError


class ResidualBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; ``conv2`` ends the residual branch."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class Autoencoder(nn.Module):
    """Images in [-1, 1] <-> latents of ``latent_channels`` at half resolution."""

    def __init__(self, channels: int, width: int, blocks: int, latent_channels: int):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            *[ResidualBlock(width) for _ in range(blocks)],
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            *[ResidualBlock(2 * width) for _ in range(blocks)],
            nn.GroupNorm(8, 2 * width), nn.SiLU(), nn.Conv2d(2 * width, latent_channels, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * width, 3, padding=1),
            *[ResidualBlock(2 * width) for _ in range(blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * width, width, 3, padding=1),
            *[ResidualBlock(width) for _ in range(blocks)],
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))


class __CLASS__(Reconstructor):
    capabilities = frozenset({"latent", "lora_targets"})
    stages = ("autoencoder",)
    size_multiple = 2  # one downsampling

    def __init__(self, config, channels: int):
        super().__init__(config, channels)
        self.autoencoder = Autoencoder(channels, config.width, config.blocks, config.latent_channels)

    # --- the latent protocol (capability "latent") -----------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> latents (through E' while an adaptor is enabled: its hooks act here)."""
        return self.autoencoder.encoder(images * 2 - 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in about [0, 1] (not clamped, so losses keep their gradients)."""
        return (self.autoencoder.decoder(latents) + 1) / 2

    # --- phase 1 ---------------------------------------------------------------------------------------------
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        if stage != "autoencoder":
            raise UserError(f"backbone '__NAME__' trains only the stage 'autoencoder', not '{stage}'.")
        return list(self.autoencoder.parameters())

    def reconstruction_loss(self, stage, clean, roi, degraded=None):
        output = self.decode(self.encode(clean))
        weight = roi.expand_as(clean)
        l1 = ((output - clean).abs() * weight).sum() / weight.sum().clamp(min=1)
        return self.config.l1_weight * l1, {"l1": float(l1.detach())}

    # --- phase 2 ---------------------------------------------------------------------------------------------
    def adaptation_targets(self) -> list[AdaptationTarget]:
        return [AdaptationTarget(name=f"autoencoder.encoder.{index}.conv2", group="encoder", module=block.conv2,
                                 channels=block.conv2.out_channels)
                for index, block in enumerate(self.autoencoder.encoder) if isinstance(block, ResidualBlock)]

    def lora_target_modules(self) -> dict[str, list[str]]:
        """Module names inside each network of networks() that a LoRA adaptor may wrap."""
        return {"autoencoder": [f"encoder.{index}.{conv}" for index, block in enumerate(self.autoencoder.encoder)
                                if isinstance(block, ResidualBlock) for conv in ("conv1", "conv2")]}

    def adaptation_loss(self, lq, hq, roi):
        with torch.no_grad(), self.base_only():
            target = self.encode(hq)  # E(hq): the frozen original encoder
        towards_clean = F.l1_loss(self.encode(lq), target)
        stay_put = F.l1_loss(self.encode(hq), target)
        return towards_clean + stay_put, {"latent_l1_lq": float(towards_clean.detach())}

    # --- enhancement -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def enhance(self, lq, *, path="fast", steps=10, eta=1.0, generator=None, noise=None):
        if path != "fast":
            raise UserError(f"backbone '__NAME__' has only the enhancement path 'fast', not '{path}'.")
        return self.decode(self.encode(lq)).clamp(0, 1)

    # --- weights ---------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}
'''

TESTS_BACKBONE = '''\
"""rdiff's contract for a backbone, and a built-in adaptor attached to it."""

from rdiff.testing import AdaptorContract, BackboneContract


class Test__CLASS__(BackboneContract):
    backbone = "__NAME__"
    preset = "tiny"


class Test__CLASS__WithResidualAdaptor(AdaptorContract):
    adaptor = "residual"  # rdiff's built-in adaptor, through the backbone's adaptation_targets()
    backbone = "__NAME__"
'''

# --- templates: adaptor --------------------------------------------------------------------------------------

INIT_ADAPTOR = '''\
"""rdiff plugin: the ``__NAME__`` adaptor.

rdiff imports this module at start-up, so it stays light: torch loads only when the adaptor is built.
"""

from __future__ import annotations

from rdiff import hookimpl

SUMMARY = "a zero-initialised 1x1 convolution added to the end of each chosen residual branch"


@hookimpl
def rdiff_register_adaptors(register):
    from __PACKAGE__.config import __CLASS__Config

    # requires: backbone capabilities the adaptor needs; a backbone lacking one is refused in one sentence
    register("__NAME__", build=_build, config=__CLASS__Config, summary=SUMMARY, requires=())


def _build(config, backbone):
    from __PACKAGE__.adaptor import __CLASS__

    return __CLASS__(config, backbone)
'''

CONFIG_ADAPTOR = '''\
"""Options of the ``__NAME__`` adaptor (``adaptor_options.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class __CLASS__Config:
    """A 1×1 convolution (a linear map for token features) on the residual branch of every chosen target."""

    groups: list[str] = field(default_factory=lambda: ["encoder", "denoiser_down", "denoiser_mid"])  # adaptation target groups to adapt
    zero_init: bool = True  # start as the identity: the adapted backbone equals its base until the first update
'''

ADAPTOR = '''\
"""The ``__NAME__`` adaptor (see rdiff.Adaptor for the conventions).

For every adaptation target the backbone offers in the chosen groups, a forward hook turns the output ``h``
of the target module (the end of a residual branch) into ``h + layer(h)`` while the adaptor is enabled.
The layers live in the adaptor, never in the backbone, so the backbone's weights stay untouched and the
adaptor's save on their own.
"""

from __future__ import annotations

import torch
from torch import nn

from rdiff import Adaptor, UserError


def _key(target_name: str) -> str:
    return target_name.replace(".", "/")  # module names cannot hold dots


class __CLASS__(Adaptor):
    name = "__NAME__"
    requires = frozenset()  # backbone capabilities needed (the same as registered)

    def __init__(self, config, backbone):
        super().__init__(config, backbone)  # checks `requires` and attaches itself to the backbone
        targets = [t for t in backbone.adaptation_targets() if t.group in config.groups]
        if not targets:
            raise UserError(f"adaptor '__NAME__' finds no adaptation target of the groups {config.groups} in "
                            f"backbone '{backbone.registered_name}'.")
        self.layers = nn.ModuleDict({_key(t.name): self._layer(t.channels, t.layout) for t in targets})
        self._handles = [t.module.register_forward_hook(self._hook(self.layers[_key(t.name)])) for t in targets]

    def _layer(self, channels: int, layout: str) -> nn.Module:
        layer = nn.Conv2d(channels, channels, 1) if layout == "BCHW" else nn.Linear(channels, channels)
        if self.config.zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        return layer

    def _hook(self, layer: nn.Module):
        def add(module, inputs, output: torch.Tensor):
            return output + layer(output) if self.enabled else None  # None keeps the base's output exactly
        return add

    def detach(self) -> None:
        """Unhook from the backbone (it then runs exactly as its base)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
'''

TESTS_ADAPTOR = '''\
"""rdiff's contract for an adaptor, on a built-in backbone."""

from rdiff.testing import AdaptorContract


class Test__CLASS__(AdaptorContract):
    adaptor = "__NAME__"
    backbone = "cnn-ae"  # any registered backbone whose capabilities cover the adaptor's `requires`
    preset = "tiny"
'''

INIT = {"backbone": INIT_BACKBONE, "adaptor": INIT_ADAPTOR, "modality": INIT_MODALITY}
CONFIG = {"backbone": CONFIG_BACKBONE, "adaptor": CONFIG_ADAPTOR, "modality": CONFIG_MODALITY}
IMPLEMENTATION = {"backbone": BACKBONE, "adaptor": ADAPTOR, "modality": MODALITY}
TESTS = {"backbone": TESTS_BACKBONE, "adaptor": TESTS_ADAPTOR, "modality": TESTS_MODALITY}


def main(argv: list[str] | None = None) -> int:
    """``python -m rdiff.scaffold NAME --kind KIND`` (the same as ``rdiff new-plugin``)."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m rdiff.scaffold")
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["new-plugin", *(sys.argv[1:] if argv is None else argv)])
        return args.handler(args)
    except UserError as exc:
        print(f"rdiff: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
