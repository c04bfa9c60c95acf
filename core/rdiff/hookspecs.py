"""The whole plugin API of rdiff: every hook a plugin may implement.

A plugin is a module (or object) exposed through the ``rdiff`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points.rdiff]
    histology = "rdiff_histology"

whose functions are marked with :data:`hookimpl`::

    from rdiff import hookimpl

    @hookimpl
    def rdiff_register_modalities(register):
        register("histology", build=_build, config=HistologyConfig, summary="H&E slides")

rdiff calls every hook with keyword arguments, so an implementation may accept only the arguments it needs.
A function named ``rdiff_*`` and marked as a hook that is not listed here makes its plugin fail to load
with an error naming the function (a misspelled hook never silently does nothing).

``register`` takes a name, a ``build`` callable and metadata; see :class:`rdiff.hookspecs.Register` for the
keywords. ``build`` is called only when the component is used, so a plugin module should import torch and
other heavy libraries inside ``build`` (or the module it imports there): ``rdiff --help`` and ``rdiff
plugins`` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import argparse
    from pathlib import Path

hookspec = pluggy.HookspecMarker("rdiff")
hookimpl = pluggy.HookimplMarker("rdiff")


# --- what a registration hook receives ------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One registered component: how to build it and what it declares about itself."""

    kind: str
    name: str
    build: Callable[..., Any]
    config: type | None
    summary: str
    plugin: str
    capabilities: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    presets: dict[str, dict] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # training defaults of an adaptor or modality


class NameTaken(ValueError):
    """A plugin registered a component name another plugin already holds."""


class Register:
    """The callable a ``rdiff_register_*`` hook receives.

    ``register(name, build, *, config=None, summary="", capabilities=(), requires=(), presets=None, train=None)``

    - ``build``: backbone ``build(config, channels)``, adaptor ``build(config, backbone)``,
      modality ``build(config)``; called only when the component is used.
    - ``config``: a dataclass whose fields are the component's options (its defaults are the defaults;
      its docstring and field comments become the configuration reference).
    - ``summary``, ``capabilities`` (backbones), ``requires`` (adaptors) and ``presets`` (backbones: named
      partial run configurations) describe the component; a plugin may keep them in a YAML file of its
      own and pass them on with ``register(name, build, config=..., **declarations(__name__)[kind][name])``
      (:func:`rdiff.plugins.declarations`), as the built-in plugins do.
    - ``train`` (adaptors, modalities): its own ``train.*`` defaults, e.g. ``{"adapt_lr": 1e-2}`` for a small
      adaptor; over the backbone's preset, under ``--config``, flags and ``--set`` (docs/configuration.md).
    """

    def __init__(self, table: dict[str, Entry], kind: str, plugin: str,
                 origin: Callable[[str], str] = lambda plugin: plugin):
        self._table, self._kind, self._plugin, self._origin = table, kind, plugin, origin

    def __call__(self, name: str, build: Callable[..., Any], *, config: type | None = None, summary: str = "",
                 capabilities: tuple[str, ...] | list[str] = (), requires: tuple[str, ...] | list[str] = (),
                 presets: dict[str, dict] | None = None, train: dict[str, Any] | None = None) -> None:
        table = self._table
        if name in table:
            # a name belongs to whoever registered it first (built-ins register first)
            first = table[name].plugin
            raise NameTaken(f"{self._kind} '{name}' is already registered by plugin '{first}' "
                            f"({self._origin(first)}); plugin '{self._plugin}' ({self._origin(self._plugin)}) "
                            f"may not take it over, so it was left out (to replace '{first}', block it with "
                            f"RDIFF_BLOCK_PLUGINS={first})")
        table[name] = Entry(self._kind, name, build, config, summary, self._plugin,
                            tuple(capabilities), tuple(requires), dict(presets or {}), dict(train or {}))


# --- registration: what a plugin provides -------------------------------------------------------------


@hookspec
def rdiff_register_backbones(register: Register) -> None:
    """Register reconstruction backbones (subclasses of :class:`rdiff.Reconstructor`).

    ``register(name, build=..., config=..., summary=..., capabilities=(...), presets={...})``.
    ``build(config, channels)`` returns the backbone; ``config`` is an instance of the ``config``
    dataclass filled from the preset and the user's overrides. ``capabilities`` name what adaptors may
    rely on (``latent``, ``concat_condition``, ``down_residuals``, ``lora_targets``, ``sampling``).
    """


@hookspec
def rdiff_register_adaptors(register: Register) -> None:
    """Register phase-2 adaptors (subclasses of :class:`rdiff.Adaptor`).

    ``register(name, build=..., config=..., summary=..., requires=(...), train={...})``: ``build(config,
    backbone)`` returns the adaptor, already attached to the frozen backbone; ``requires`` lists backbone
    capabilities (a backbone lacking one is refused before ``build`` is called); ``train``: see ``Register``.
    """


@hookspec
def rdiff_register_modalities(register: Register) -> None:
    """Register modalities (subclasses of :class:`rdiff.Modality`).

    ``register(name, build=..., config=..., summary=..., train={...})``. ``build(config)`` returns the modality.
    """


@hookspec
def rdiff_register_pretrained(register: Any) -> None:
    """Declare phase-1 weights shipped inside the plugin's package: ``register(directory)`` for each folder
    laid out like a run's phase 1 (``config.yaml`` naming backbone, preset and modality; ``reconstruct/``
    with the networks; ``MODEL_CARD.md``). It is named ``<backbone>.<preset>-<modality>`` and used by
    ``rdiff adapt --from pretrained:NAME`` and ``create_backbone(..., pretrained=...)``; see
    :mod:`rdiff.pretrained`. A plugin may ship weights for another plugin's backbone."""


# --- the command line -----------------------------------------------------------------------------------


@hookspec
def rdiff_add_cli_options(command: str, parser: argparse.ArgumentParser) -> None:
    """Add options to the built-in subcommand ``command`` (``train``, ``enhance``, ...).

    Their parsed values reach the plugin through :func:`rdiff_run_started` as ``cli_args``. Use a
    prefix of the plugin's name for option names so two plugins never clash. A plugin may also wrap the
    command's handler (``parser.get_default("handler")``), as the built-in ``rdiff_estimate`` does to
    answer ``rdiff train --dry-run``.
    """


@hookspec
def rdiff_register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add whole subcommands: ``p = subparsers.add_parser(...)``; ``p.set_defaults(handler=fn)``.

    ``fn(args) -> int`` runs the command and returns the exit code. The built-in plugins ``rdiff_list``,
    ``rdiff_bench``, ``rdiff_scaffold`` and ``rdiff_degrade`` add ``rdiff list`` and ``rdiff plugins``,
    ``rdiff bench``, ``rdiff new-plugin`` and ``rdiff degrade``.
    """


# --- observers: called by the engine, return values are ignored --------------------------------------------


@hookspec
def rdiff_run_started(run_dir: Path, config: Any, cli_args: Any) -> None:
    """A training run is about to start (on the main process only). ``config`` is the resolved
    :class:`rdiff.config.RunConfig`; ``cli_args`` the parsed command line, or ``None`` from Python."""


@hookspec
def rdiff_step_end(phase: str, stage: str, step: int, logs: dict[str, float]) -> None:
    """A line was written to metrics.jsonl (main process only); ``logs`` is that line. ``phase`` is ``reconstruct``,
    ``adapt`` or ``scratch`` (``rdiff bench``'s from-scratch baseline); ``stage`` the backbone stage (e.g.
    ``autoencoder``), or ``adapt`` / ``scratch``. It fires every ``train.log_every`` steps and at a stage's last step
    (``loss``, ``lr``, ``images_per_s``, the loss's own terms); after each phase-2 validation, at step 0 and every
    ``train.val_every`` steps (``val_psnr``, and ``best_step``: the step whose adaptor is kept so far); and for a
    step skipped for a non-finite loss (``nonfinite_loss``)."""


@hookspec
def rdiff_checkpoint_saved(phase: str, stage: str, step: int, path: Path) -> None:
    """A checkpoint was written atomically to ``path`` (main process only)."""


@hookspec
def rdiff_run_finished(run_dir: Path, report: dict[str, Any]) -> None:
    """A run finished and ``report.json`` was written; ``report`` is its content."""
