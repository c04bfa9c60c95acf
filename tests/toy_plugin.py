"""A deliberately small plugin used by the core tests: it exercises every role without the built-ins.

It is written the way a third-party plugin is written (hook implementations that register lazily built
components), so the core tests also check that the plugin API is enough to add a backbone, an adaptor
and a modality.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdiff import hookimpl

TOY_PRESETS = {
    "tiny": {
        "model": {"width": 8},
        "train": {"image_size": 32, "resize": None, "batch_size": 4, "steps": {"autoencoder": 4},
                  "adapt_steps": 4, "adapt_batch_size": 2, "pairs": 4, "val_pairs": 2, "val_every": 2,
                  "checkpoint_every": 2, "log_every": 1},
        "eval": {"crops": 4, "path": "fast"},
    }
}


@dataclass
class ToyConfig:
    width: int = 8  # feature channels of the toy autoencoder


@dataclass
class ToyAdaptorConfig:
    zero_init: bool = True  # start as the identity


@hookimpl
def rdiff_register_backbones(register):
    register("toy", build=_backbone, config=ToyConfig, summary="a two-layer conv autoencoder for tests",
             capabilities=("latent",), presets=TOY_PRESETS)


@hookimpl
def rdiff_register_adaptors(register):
    register("toy-adaptor", build=_adaptor, config=ToyAdaptorConfig, summary="1x1 conv on the encoder output",
             requires=("latent",))


@hookimpl
def rdiff_register_modalities(register):
    register("toy", build=_modality, summary="smooth random images")


def _backbone(config, channels):
    from toy_components import ToyBackbone

    return ToyBackbone(config, channels)


def _adaptor(config, backbone):
    from toy_components import ToyAdaptor

    return ToyAdaptor(config, backbone)


def _modality(config):
    from toy_components import ToyModality

    return ToyModality(config)
