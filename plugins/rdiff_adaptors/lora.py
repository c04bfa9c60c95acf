"""LoRA through peft: low-rank updates of the layers a backbone names in each of its networks.

The backbone (capability ``lora_targets``) says which modules may be wrapped, per network:
``lora_target_modules() -> {"autoencoder": [...], "denoiser": [...]}`` (module names, name suffixes or
regular expressions). peft's ``inject_adapter_in_model`` replaces those modules *inside the backbone's
networks* by LoRA layers whose ``B`` matrix starts at zero, so the adapted model equals its base at start.
Consequences worth knowing:

- the LoRA parameters live inside the backbone's modules: :meth:`trainable_parameters` lists them, while
  this adaptor module itself owns no parameter;
- while attached, the backbone's ``state_dict`` holds the LoRA weights too and names each wrapped base
  layer ``<module>.base_layer`` (peft's layout); :meth:`detach` puts the original modules back;
- :meth:`disabled` switches the LoRA layers off through peft (``enable_adapters(False)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rdiff.errors import UserError
from rdiff.plugins import declarations
from rdiff.reconstructor import Reconstructor

from .base import DetachableAdaptor, check_keys, detached

ADAPTER_NAME = "rdiff"  # peft's name for this adapter inside each network
# Layer types peft's LoRA can wrap; a target naming anything else is refused with the module's type.
_WRAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _matches(pattern: str, name: str) -> bool:
    """peft's rule for a list entry (the whole name or a dotted suffix), or a full-match regular expression."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def resolve_targets(network: nn.Module, patterns: list[str], network_name: str) -> list[str]:
    """The full names of ``network``'s modules that ``patterns`` select; one readable error otherwise."""
    chosen: list[str] = []
    for pattern in patterns:
        hits = [(n, m) for n, m in network.named_modules() if n and _matches(pattern, n)]
        if not hits:
            raise UserError(f"lora target '{pattern}' matches no module of network '{network_name}'.")
        wrappable = [n for n, m in hits if isinstance(m, _WRAPPABLE)]
        if not wrappable:
            raise UserError(f"lora target '{pattern}' in network '{network_name}' selects a "
                            f"{type(hits[0][1]).__name__}, which LoRA cannot wrap (use linear, conv or embedding layers).")
        chosen += [n for n in wrappable if n not in chosen]
    return chosen


class LoRAAdaptor(DetachableAdaptor):
    """peft LoRA on the modules named by the backbone's ``lora_target_modules()`` (see the module docstring)."""

    name = "lora"
    requires = frozenset(declarations("rdiff_adaptors")["adaptors"]["lora"]["requires"])  # its plugin.yaml

    def _attach(self, config: Any, backbone: Reconstructor) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if config.rank < 1:
            raise UserError(f"adaptor_options.rank must be at least 1, not {config.rank}.")
        networks = backbone.networks()
        targets = config.target_modules if config.target_modules is not None else backbone.lora_target_modules()
        chosen: dict[str, list[str]] = {}
        for network_name, patterns in targets.items():  # every name checked before anything is wrapped
            if network_name not in networks:
                raise UserError(f"adaptor_options.target_modules names network '{network_name}', but backbone "
                                f"'{backbone.registered_name}' has only {', '.join(networks)}.")
            if patterns:
                chosen[network_name] = resolve_targets(networks[network_name], list(patterns), network_name)
        if not chosen:
            raise UserError(f"adaptor 'lora' has no module to wrap in backbone '{backbone.registered_name}'.")
        self._networks: dict[str, nn.Module] = {}  # plain dict, not submodules: the networks are the backbone's
        for network_name, names in chosen.items():
            lora_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                     target_modules=names, init_lora_weights=True, bias="none")
            self._networks[network_name] = networks[network_name]  # first, so a failure below is undone
            inject_adapter_in_model(lora_config, networks[network_name], adapter_name=ADAPTER_NAME)

    # --- on / off ----------------------------------------------------------------------------------------
    def _tuner_layers(self) -> Iterator[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for network in getattr(self, "_networks", {}).values():  # none before _attach has run
            for module in network.modules():
                if isinstance(module, BaseTunerLayer):
                    yield module

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        # peft's switch also flips requires_grad of the LoRA weights; keep whatever the caller had set
        trainable = {p: p.requires_grad for p in self.trainable_parameters()}
        for layer in self._tuner_layers():
            layer.enable_adapters(self._enabled)
        for parameter, flag in trainable.items():
            parameter.requires_grad_(flag)

    # --- what trains and what saves ------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA matrices (they live inside the backbone's wrapped modules)."""
        parameters: list[nn.Parameter] = []
        for layer in self._tuner_layers():
            for attribute in layer.adapter_layer_names:
                adapters = getattr(layer, attribute)
                if ADAPTER_NAME in adapters:
                    item = adapters[ADAPTER_NAME]
                    parameters += [item] if isinstance(item, nn.Parameter) else list(item.parameters())
        return parameters

    def adaptor_state_dict(self) -> dict[str, torch.Tensor]:
        """peft's adapter state of each network, keyed ``<network>.<module>.lora_A.weight`` and so on."""
        from peft import get_peft_model_state_dict

        state: dict[str, torch.Tensor] = {}
        for network_name, network in self._networks.items():
            for key, value in get_peft_model_state_dict(network, adapter_name=ADAPTER_NAME).items():
                state[f"{network_name}.{key}"] = value
        return detached(state)

    def load_adaptor_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        check_keys(self.name, set(self.adaptor_state_dict()), set(state))
        for network_name, network in self._networks.items():
            prefix = f"{network_name}."
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            result = set_peft_model_state_dict(network, own, adapter_name=ADAPTER_NAME)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise UserError(f"the saved 'lora' adaptor weights hold an unknown '{prefix}{unexpected[0]}'.")

    # --- removal -----------------------------------------------------------------------------------------
    def _remove_from_backbone(self) -> None:
        # put every wrapped module back in its parent, dropping the LoRA weights with the wrapper
        from peft.tuners.tuners_utils import BaseTunerLayer

        for network in getattr(self, "_networks", {}).values():  # none before _attach has run
            wrapped = [(name, module) for name, module in network.named_modules() if isinstance(module, BaseTunerLayer)]
            for name, module in wrapped:
                parent_name, _, child = name.rpartition(".")
                parent = network.get_submodule(parent_name) if parent_name else network
                setattr(parent, child, module.get_base_layer())
            if hasattr(network, "peft_config"):
                del network.peft_config
        self._networks = {}
