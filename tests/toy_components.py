"""The heavy half of toy_plugin: torch modules, imported only when a toy component is built."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.nn import functional as F

import rdiff


class ToyBackbone(rdiff.Reconstructor):
    capabilities = frozenset({"latent"})
    stages = ("autoencoder",)
    size_multiple = 2

    def __init__(self, config, channels):
        super().__init__(config, channels)
        w = config.width
        self.encoder = nn.Sequential(nn.Conv2d(channels, w, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(w, channels, 3, padding=1))

    def encode(self, x):
        z = self.encoder(x * 2 - 1)
        if self.adaptor is not None and self.adaptor.enabled:
            z = z + self.adaptor.layer(z)
        return z

    def decode(self, z):
        return (self.decoder(z) + 1) / 2

    def stage_parameters(self, stage):
        return list(self.parameters())

    def reconstruction_loss(self, stage, clean, roi, degraded=None):
        out = self.decode(self.encode(clean))
        return F.l1_loss(out * roi, clean * roi), {"l1": float(F.l1_loss(out.detach(), clean))}

    def adaptation_targets(self):
        return [rdiff.AdaptationTarget("encoder.2", "encoder", self.encoder[2], self.config.width)]

    def adaptation_loss(self, lq, hq, roi):
        with torch.no_grad(), self.base_only():
            target = self.encode(hq)
        return (self.encode(lq) - target).abs().mean() + (self.encode(hq) - target).abs().mean()

    def enhance(self, lq, *, path="fast", options=None, generator=None, noise=None):
        return self.decode(self.encode(lq)).clamp(0, 1)

    def networks(self):
        return {"autoencoder": self}


class ToyAdaptor(rdiff.Adaptor):
    name = "toy-adaptor"
    requires = frozenset({"latent"})

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        w = backbone.config.width
        self.layer = nn.Conv2d(w, w, 1)
        if config.zero_init:
            nn.init.zeros_(self.layer.weight)
            nn.init.zeros_(self.layer.bias)


class ToyModality(rdiff.Modality):
    name = "toy"

    def degrade(self, image, roi, rng):
        gain = float(rng.uniform(0.4, 0.7))
        out = np.where(roi[..., None], image * gain, image).astype(np.float32)
        return out, {"gain": gain, "types": ["illumination"]}

    def sample_images(self, split):
        rng = np.random.default_rng(0 if split == "train" else 1)
        images = []
        for _ in range(2):
            img = gaussian_filter(rng.random((80, 80, 3)), sigma=(4, 4, 0))
            img = (img - img.min()) / (img.max() - img.min())
            images.append(img.astype(np.float32))
        return images
