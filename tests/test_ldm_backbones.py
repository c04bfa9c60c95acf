"""The latent-diffusion backbones ``ldm-unet`` and ``dit``, tested directly through rdiff.create_backbone.

Tiny sizes (32 px, batches of 2) on CPU. Phase-2 code paths use throwaway adaptors written here, so these
tests depend on no adaptor plugin.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

import rdiff
from rdiff_ldm_unet.latent_diffusion import DDIMOptions

BACKBONES = ["ldm-unet", "dit"]


@functools.lru_cache(maxsize=None)
def _state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    backbone = rdiff.create_backbone(name, preset="tiny")
    with torch.no_grad():
        # the tiny autoencoder's image skip starts with zero residual convolutions (exactly the bicubic
        # round trip) and the residual denoiser with a zero output layer (exactly the fast path); trained
        # ones have none, and only then do gradients reach every layer at once
        for module in backbone.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and not module.weight.any():
                module.weight.normal_(0.0, 0.02)
    return backbone.state_dict()


def tiny(name: str) -> rdiff.Reconstructor:
    """A fresh tiny backbone with fixed weights (built once per name, then copied)."""
    backbone = rdiff.create_backbone(name, preset="tiny")
    backbone.load_state_dict(_state(name))
    return backbone


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth synthetic colour images in [0, 1]: random low-frequency waves per channel."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 6.28, size), torch.linspace(0, 6.28, size), indexing="ij")
    fx, fy, phase = torch.rand(3, batch, 3, 1, 1, generator=g) * torch.tensor([2.0, 2.0, 6.28]).view(3, 1, 1, 1, 1)
    return (0.5 + 0.2 * torch.sin(fx * x + phase) + 0.2 * torch.cos(fy * y)).clamp(0, 1)


def roi_of(batch: torch.Tensor) -> torch.Tensor:
    return torch.ones(batch.shape[0], 1, *batch.shape[-2:])


class ToyResidualAdaptor(rdiff.Adaptor):
    """A zero-initialised linear map of every target's output added back to it (1×1 conv or Linear)."""

    name = "toy-residual"

    def __init__(self, backbone: rdiff.Reconstructor):
        backbone.requires_grad_(False)
        super().__init__(None, backbone)
        self.layers = nn.ModuleDict()
        for target in backbone.adaptation_targets():
            c = target.channels
            layer = nn.Conv2d(c, c, 1) if target.layout == "BCHW" else nn.Linear(c, c)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
            key = target.name.replace(".", "__")
            self.layers[key] = layer
            target.module.register_forward_hook(functools.partial(self._add, key))

    def _add(self, key, module, inputs, output):
        return output + self.layers[key](output) if self.enabled else output


class ToyControlAdaptor(rdiff.Adaptor):
    """ControlNet-shaped residuals: a fixed fraction of the UNet's own down-path skips and mid output."""

    name = "toy-control"
    requires = frozenset({"down_residuals"})

    def __init__(self, backbone: rdiff.Reconstructor, strength: float = 0.5):
        super().__init__(None, backbone)
        self.strength = strength

    def control_residuals(self, sample, timestep):
        unet = self.backbone.control_unet()
        embedding = unet.time_embedding(unet.time_proj(timestep).to(sample.dtype))
        hidden = unet.conv_in(sample)
        skips = [hidden]
        for block in unet.down_blocks:
            hidden, block_skips = block(hidden_states=hidden, temb=embedding)
            skips += block_skips
        mid = unet.mid_block(hidden, embedding)
        return tuple(self.strength * s for s in skips), self.strength * mid


# --- sizes ------------------------------------------------------------------------------------------------


def test_paper_preset_has_the_papers_parameter_count():
    with torch.device("meta"):  # shapes only: counting needs no memory or initialisation
        backbone = rdiff.create_backbone("ldm-unet", preset="paper")
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(backbone) == pytest.approx(173.14e6, rel=0.02)
    assert count(backbone.autoencoder) == pytest.approx(55.40e6, rel=0.001)
    assert count(backbone.denoiser) == pytest.approx(117.74e6, rel=0.001)
    assert backbone.latent_shape(512, 512) == (3, 128, 128)  # ×4 downsampling, 3 latent channels


def test_tiny_presets_are_cpu_sized():
    for name in BACKBONES:
        backbone = tiny(name)
        assert sum(p.numel() for p in backbone.autoencoder.parameters()) < 1.0e6
        assert sum(p.numel() for p in backbone.denoiser.parameters()) < 1.5e6
        assert backbone.size_multiple in (4, 8, 16) and 64 % backbone.size_multiple == 0


def test_registered_capabilities_are_the_classes():
    from rdiff.plugins import plugins

    for name in BACKBONES:
        assert set(plugins().get("backbone", name).capabilities) == set(tiny(name).capabilities)
    assert "down_residuals" in tiny("ldm-unet").capabilities
    assert "down_residuals" not in tiny("dit").capabilities


# --- phase 1 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("ldm-unet", {}), ("ldm-unet", {"autoencoder": "kl"}), ("dit", {})])
def test_each_stage_loss_is_finite_and_trains_only_its_stage(name, options):
    backbone = rdiff.create_backbone(name, preset="tiny", **options) if options else tiny(name)
    clean = images()
    stage_ids = {stage: {id(p) for p in backbone.stage_parameters(stage)} for stage in backbone.stages}
    for stage in backbone.stages:
        backbone.zero_grad(set_to_none=True)
        degraded = clean * 0.7 if backbone.needs_degraded(stage) else None  # the default pretext's condition
        loss, logs = backbone.reconstruction_loss(stage, clean, roi_of(clean), degraded)
        assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        loss.backward()
        with_grad = {id(p) for p in backbone.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad, f"stage {stage} trains nothing"
        assert with_grad <= stage_ids[stage], f"stage {stage} leaks gradients into other networks"
    assert float(backbone.latent_scale) > 0  # measured on the first denoiser batch


@pytest.mark.parametrize("name", BACKBONES)
def test_scratch_loss_trains_the_autoencoder_and_the_denoiser(name):
    # the from-scratch baseline must train the sampling path too, or its 'ddimK' rows would score an
    # untrained denoiser; the autoencoder learns from the pixel loss only
    backbone = tiny(name)
    lq, hq = images(seed=1) * 0.6, images(seed=1)
    loss, logs = backbone.supervised_loss(lq, hq, roi_of(hq))
    loss.backward()
    assert set(logs) == {"l1", "diffusion"} and torch.isfinite(loss)
    for network in ("autoencoder", "denoiser"):
        grads = [p.grad for p in getattr(backbone, network).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{network} gets no gradient"
    backbone.zero_grad(set_to_none=True)
    backbone.denoiser.requires_grad_(False)
    backbone.supervised_loss(lq, hq, roi_of(hq))[0].backward()  # the pixel loss alone reaches the autoencoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.autoencoder.encoder.parameters())


def test_degraded_pretext_conditions_on_degraded_images():
    backbone = tiny("ldm-unet")  # the default pretext
    assert backbone.needs_degraded("denoiser") and not backbone.needs_degraded("autoencoder")
    assert not rdiff.create_backbone("ldm-unet", preset="tiny", pretext="self").needs_degraded("denoiser")
    clean = images()
    loss, _ = backbone.reconstruction_loss("denoiser", clean, roi_of(clean), degraded=clean * 0.5)
    assert torch.isfinite(loss)


def test_bad_options_are_user_errors_naming_the_key():
    with pytest.raises(rdiff.UserError, match="trains the stages autoencoder, corrector, denoiser"):
        tiny("ldm-unet").stage_parameters("decoder")
    with pytest.raises(rdiff.UserError, match="model.ae_channels"):
        rdiff.create_backbone("ldm-unet", preset="tiny", ae_channels=[16, 30, 64])
    with pytest.raises(rdiff.UserError, match="model.unet_attention"):
        rdiff.create_backbone("ldm-unet", preset="tiny", unet_attention=[True])
    with pytest.raises(rdiff.UserError, match="model.autoencoder"):
        rdiff.create_backbone("ldm-unet", preset="tiny", autoencoder="vqgan")


@pytest.mark.slow
def test_autoencoder_loss_falls_in_30_steps():
    torch.manual_seed(0)
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny")
    optimiser = torch.optim.Adam(backbone.stage_parameters("autoencoder"), lr=1e-3)
    clean, losses = images(batch=4), []
    for _ in range(30):
        loss, _ = backbone.reconstruction_loss("autoencoder", clean, roi_of(clean))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_lpips_without_local_weights_is_a_clear_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty weights cache
    with pytest.raises(rdiff.UserError, match="lpips_weight"):
        rdiff.create_backbone("ldm-unet", preset="tiny", lpips_weight=0.1)


def test_patchgan_trains_with_the_autoencoder():
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny", gan_weight=0.1, discriminator_channels=16)
    clean = images()
    loss, logs = backbone.reconstruction_loss("autoencoder", clean, roi_of(clean))
    loss.backward()
    assert {"gan", "discriminator"} <= set(logs)
    assert all(p.grad is not None for p in backbone.networks()["discriminator"].parameters())


# --- phase 2 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_adaptation_targets_name_real_res_blocks(name):
    backbone = tiny(name)
    targets = backbone.adaptation_targets()
    groups = {t.group for t in targets}
    assert {"encoder", "denoiser_down", "denoiser_up"} <= groups
    for target in targets:
        assert backbone.get_submodule(target.name) is target.module
        assert target.group in ("image", "encoder", "denoiser_down", "denoiser_mid", "denoiser_up")
    encoder = [t for t in targets if t.group == "encoder"]
    # every encoder res-block, and with the tiny preset's image skip the latent itself (un-normalised, where
    # phase 2 corrects colour and illumination)
    blocks = [t for t in encoder if t.name != "autoencoder.latent_out"]
    assert blocks and all(t.name.startswith("autoencoder.encoder.") and t.name.endswith(".conv2") for t in blocks)
    assert [t.norm for t in encoder if t.name == "autoencoder.latent_out"] == ["none"]
    # with the image skip the input image itself is a target too, before the encoder, seen whole
    assert [(t.name, t.layout) for t in targets if t.group == "image"] == [("autoencoder.image_in", "BCHW")]
    if name == "ldm-unet":
        assert "denoiser_mid" in groups and all(t.layout == "BCHW" for t in targets)
    else:
        assert {t.layout for t in targets if t.group not in ("encoder", "image")} == {"BLC"}


@pytest.mark.parametrize("name", BACKBONES)
def test_adaptation_loss_trains_the_adaptor_and_starts_at_the_base(name):
    backbone = tiny(name)
    hq = images(seed=1)
    lq = hq * 0.6
    base = backbone.enhance(lq, path="fast")
    adaptor = ToyResidualAdaptor(backbone)
    assert torch.equal(backbone.enhance(lq, path="fast"), base)  # zero-initialised: exactly the base
    loss, logs = backbone.adaptation_loss(lq, hq, roi_of(hq))
    assert {"encoder", "diffusion"} <= set(logs) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())  # the base stays frozen
    encoder_layers = [layer for key, layer in adaptor.layers.items() if key.startswith("autoencoder__")]
    denoiser_layers = [layer for key, layer in adaptor.layers.items() if key.startswith("denoiser__")]
    assert all(layer.weight.grad.abs().sum() > 0 for layer in encoder_layers)
    assert any(layer.weight.grad.abs().sum() > 0 for layer in denoiser_layers)
    with torch.no_grad():
        for layer in encoder_layers:
            layer.weight.normal_(std=0.1)
    adapted = backbone.enhance(lq, path="fast")
    assert not torch.allclose(adapted, base)
    with backbone.base_only():
        assert torch.equal(backbone.enhance(lq, path="fast"), base)


def test_detail_loss_asks_for_the_clean_detail_at_its_strength_and_place():
    from torchvision.transforms.functional import gaussian_blur

    from rdiff_ldm_unet.autoencoder import detail_loss

    texture = gaussian_blur(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), [5, 5], [1.0, 1.0])
    clean = images(seed=3) + 0.1 * texture  # waves with fine detail on them
    smooth = gaussian_blur(clean, [13, 13], [2.0, 2.0])
    faded = smooth + 0.5 * (clean - smooth)  # the detail a squared error settles on under uncertainty
    moved = smooth + torch.roll(clean - smooth, shifts=(5, 5), dims=(-2, -1))  # as strong, elsewhere
    same = float(detail_loss(clean, clean))
    assert same < 1e-3
    assert float(detail_loss(clean + 0.1, clean)) == pytest.approx(same, abs=1e-4)  # brightness is not detail
    assert float(detail_loss(faded, clean)) > same + 0.01
    assert float(detail_loss(moved, clean)) > float(detail_loss(faded, clean))


def test_detail_loss_reaches_the_encoders_adaptor_through_the_frozen_decoder():
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny", detail_loss_weight=20.0, diffusion_loss_weight=0.0)
    backbone.load_state_dict(_state("ldm-unet"))
    hq = images(seed=1)
    adaptor = ToyResidualAdaptor(backbone)
    loss, logs = backbone.adaptation_loss(hq * 0.6, hq, roi_of(hq))
    assert "detail" in logs and logs["detail"] > 0
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())  # the decoder it passes through stays frozen
    assert any(layer.weight.grad.abs().sum() > 0 for key, layer in adaptor.layers.items() if key.startswith("autoencoder__"))


def test_autoencoder_stage_adds_the_detail_term_at_its_weight():
    """Phase 1 of the tiny preset asks for the clean image's fine detail too (model.detail_weight): without
    it, the image-skip autoencoder settled at 37 dB on unseen photographs and lost the finest vessels."""
    clean = images(seed=2)
    losses = {}
    for weight in (0.0, 2.0):
        backbone = rdiff.create_backbone("ldm-unet", preset="tiny", detail_weight=weight)
        backbone.load_state_dict(_state("ldm-unet"))
        torch.manual_seed(0)  # the same posterior sample for both
        losses[weight] = backbone.reconstruction_loss("autoencoder", clean, roi_of(clean))
    (off, off_logs), (on, on_logs) = losses[0.0], losses[2.0]
    assert "detail" not in off_logs and on_logs["detail"] > 0
    assert float((on - off).detach()) == pytest.approx(on_logs["detail"], rel=1e-4)


def test_lora_targets_exist_in_tiny_and_paper_networks():
    with torch.device("meta"):
        paper = rdiff.create_backbone("ldm-unet", preset="paper")
    for backbone in (tiny("ldm-unet"), tiny("dit"), paper):
        targets = backbone.lora_target_modules()
        assert set(targets) == {"autoencoder", "denoiser"}
        networks = backbone.networks()
        for network, names in targets.items():
            assert names
            for module_name in names:
                assert isinstance(networks[network].get_submodule(module_name), (nn.Conv2d, nn.Linear))
        assert all(n.startswith("encoder.") for n in targets["autoencoder"])
    assert any(n.endswith("attentions.0.to_q") for n in paper.lora_target_modules()["denoiser"])


@pytest.mark.parametrize("name", BACKBONES)
def test_peft_wraps_exactly_the_named_lora_targets(name):
    from peft import LoraConfig, inject_adapter_in_model

    backbone = tiny(name)
    for network, names in backbone.lora_target_modules().items():
        wrapped = inject_adapter_in_model(LoraConfig(r=2, target_modules=names), backbone.networks()[network])
        assert sum(name.endswith("lora_A.default.weight") for name, _ in wrapped.named_parameters()) == len(names)


def test_control_residuals_reach_the_unet_only_while_enabled():
    from rdiff_ldm_unet.unet import unet_forward

    backbone = tiny("ldm-unet")
    unet = backbone.control_unet()
    sample, t = torch.randn(2, 2 * backbone.config.latent_channels, 8, 8), torch.tensor([3, 700])
    plain = unet(sample, t).sample
    assert torch.equal(unet_forward(unet, sample, t), plain)
    adaptor = ToyControlAdaptor(backbone)
    with torch.no_grad():
        controlled = backbone.predict(sample, t)
        with backbone.base_only():
            assert torch.allclose(backbone.predict(sample, t), plain, atol=1e-6)  # predict runs channels-last
        down, mid = adaptor.control_residuals(sample, t)
        assert torch.allclose(controlled, unet_forward(unet, sample, t, down, mid), atol=1e-5)
        zeros = unet_forward(unet, sample, t, tuple(torch.zeros_like(d) for d in down), torch.zeros_like(mid))
    assert not torch.allclose(controlled, plain)
    assert torch.allclose(zeros, plain, atol=1e-6)


def test_unet_forward_equals_diffusers_at_the_paper_layout():
    from rdiff_ldm_unet.unet import unet_forward

    torch.manual_seed(0)
    backbone = rdiff.create_backbone("ldm-unet", preset="tiny", unet_channels=[32, 32, 64, 64],
                                     unet_attention=[False, True, True, True], unet_mid_attention=True, head_dim=16)
    unet = backbone.denoiser
    sample, t = torch.randn(2, 2 * backbone.config.latent_channels, 16, 16), torch.tensor([1, 999])
    with torch.no_grad():
        assert torch.equal(unet_forward(unet, sample, t), unet(sample, t).sample)


def test_dit_forward_equals_diffusers_and_takes_non_square_latents():
    from rdiff_dit.backbone import dit_forward

    backbone = tiny("dit")
    dit, channels = backbone.denoiser, backbone.config.latent_channels
    sample, t = torch.randn(2, 2 * channels, 8, 8), torch.tensor([5, 900])
    with torch.no_grad():
        reference = dit(sample, t, class_labels=torch.zeros(2, dtype=torch.long)).sample
        assert torch.equal(dit_forward(dit, sample, t), reference)
        assert dit_forward(dit, torch.randn(2, 2 * channels, 8, 12), t).shape == (2, channels, 8, 12)


# --- enhancement ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_enhance_keeps_shape_and_range_on_both_paths(name):
    backbone = tiny(name)
    lq = images(size=32)
    assert backbone.paths() == ("fast", "sample")
    for path in backbone.paths():
        out = backbone.enhance(lq, path=path, options=DDIMOptions(steps=3), generator=torch.Generator().manual_seed(0))
        assert out.shape == lq.shape and out.dtype == lq.dtype
        assert out.min() >= 0 and out.max() <= 1
    wide = images(batch=1, size=32).repeat(1, 1, 1, 2)  # 32×64
    assert backbone.enhance(wide, path="sample", options=DDIMOptions(steps=2)).shape == wide.shape
    with pytest.raises(rdiff.UserError, match="not one of"):
        backbone.enhance(lq, path="ddpm")
    with pytest.raises(rdiff.UserError, match="no enhancement path 'ddpm'"):
        backbone.resolve_path("ddpm")


def test_the_sampling_options_are_the_backbones_own_typed_object():
    backbone = tiny("ldm-unet")
    assert backbone.sampling_options is DDIMOptions
    settings = {"sample_steps": [10, 20], "eta": 0.5}
    assert backbone.path_names(**settings) == ["fast", "ddim10", "ddim20"]
    assert backbone.resolve_path("fast", **settings) == ("fast", None)
    assert backbone.resolve_path("ddim20", **settings) == ("sample", DDIMOptions(steps=20, eta=0.5))
    assert backbone.resolve_path("sample", **settings) == ("sample", DDIMOptions(steps=10, eta=0.5))
    assert backbone.resolve_path("ddim20", steps=3, eta=None) == ("sample", DDIMOptions(steps=3, eta=0.0))
    with pytest.raises(rdiff.UserError, match="steps must be at least 1, not 0"):
        backbone.resolve_path("sample", steps=0)


def test_a_run_resolves_its_own_path_name_under_the_users_settings(tmp_path):
    from rdiff.config import RunConfig
    from rdiff.run import Run

    config = RunConfig()
    config.eval.path, config.eval.sample_steps, config.eval.eta = "ddim20", [10, 20], 0.5
    run = Run(tmp_path, config, None, tiny("ldm-unet"), adapted=False)
    assert run.resolve_path() == ("sample", DDIMOptions(steps=20, eta=0.5))
    assert run.resolve_path("sample") == ("sample", DDIMOptions(steps=20, eta=0.5))  # what eval.path means
    assert run.resolve_path("sample", steps=5, eta=None) == ("sample", DDIMOptions(steps=5, eta=0.5))
    assert run.resolve_path("ddim10") == ("sample", DDIMOptions(steps=10, eta=0.5))
    assert run.resolve_path("fast", steps=5) == ("fast", None)


def test_sampling_is_deterministic_for_a_fixed_generator_or_noise():
    backbone = tiny("ldm-unet")
    lq = images(size=32)
    run = lambda seed, **kw: backbone.enhance(lq, path="sample", options=DDIMOptions(steps=4, eta=1.0),  # noqa: E731
                                              generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    noise = torch.randn(2, *backbone.latent_shape(32, 32))
    assert torch.equal(run(5, noise=noise), run(5, noise=noise.clone()))
    eta0 = [backbone.enhance(lq, path="sample", options=DDIMOptions(steps=4, eta=0.0), noise=noise,
                             generator=torch.Generator().manual_seed(s))
            for s in (0, 1)]
    assert torch.equal(*eta0)  # deterministic DDIM: the noise alone fixes the result


def test_gradient_checkpointing_gives_the_same_loss():
    backbone = tiny("ldm-unet")
    clean = images()
    torch.manual_seed(3)
    reference, _ = backbone.reconstruction_loss("autoencoder", clean, roi_of(clean))
    backbone.enable_gradient_checkpointing()
    torch.manual_seed(3)
    checkpointed, _ = backbone.reconstruction_loss("autoencoder", clean, roi_of(clean))
    checkpointed.backward()
    assert torch.allclose(reference, checkpointed)


# --- weights ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_saved_networks_load_in_diffusers_and_back(name, tmp_path):
    from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DModel, VQModel

    # the paper's layout (GroupNorm, VQ, no image skip) is plain diffusers; the tiny preset's ChannelNorm
    # and image skip need rdiff to load (tested in test_enhance.py and through rdiff.load_run)
    paper_layout = dict(norm="group", image_skip=False, autoencoder="vq", latent_channels=3, codebook_size=1024)
    torch.manual_seed(0)
    backbone = rdiff.create_backbone(name, preset="tiny", **paper_layout)
    clean = images(size=32)
    backbone.reconstruction_loss("denoiser", clean, roi_of(clean), clean * 0.7)  # measures the latent scale
    backbone.save(tmp_path)

    autoencoder = VQModel.from_pretrained(tmp_path / "autoencoder")
    assert autoencoder.config.scaling_factor == pytest.approx(float(backbone.latent_scale))
    with torch.no_grad():
        ours = backbone.enhance(clean, path="fast")
        theirs = ((autoencoder.decode(autoencoder.encode(clean * 2 - 1).latents).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(ours, theirs, atol=1e-5)

    denoiser_class = UNet2DModel if name == "ldm-unet" else DiTTransformer2DModel
    denoiser = denoiser_class.from_pretrained(tmp_path / "denoiser")
    sample, t = torch.randn(2, 6, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        extra = {} if name == "ldm-unet" else {"class_labels": torch.zeros(2, dtype=torch.long)}
        assert torch.allclose(denoiser(sample, t, **extra).sample, backbone.predict(sample, t), atol=1e-5)
    assert DDPMScheduler.from_pretrained(tmp_path / "scheduler").config.beta_schedule == "scaled_linear"

    restored = rdiff.create_backbone(name, preset="tiny", **paper_layout)
    restored.load(tmp_path)
    assert float(restored.latent_scale) == pytest.approx(float(backbone.latent_scale))
    sample_with = lambda b: b.enhance(clean, path="sample", options=DDIMOptions(steps=3),  # noqa: E731
                                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sample_with(restored), sample_with(backbone), atol=1e-5)
    assert json.loads((tmp_path / "autoencoder" / "config.json").read_text())["num_vq_embeddings"] == 1024


def test_nearest_code_search_matches_diffusers_without_keeping_the_distances():
    """The VQ autoencoder's quantiser finds codes in chunks outside autograd: the same codes, losses and
    gradients as diffusers' VectorQuantizer, and no latent-vectors × codes matrix kept for backward (2 GiB
    per 512-px crop at the paper's 32,768 codes)."""
    from diffusers.models.autoencoders.vae import VectorQuantizer

    from rdiff_ldm_unet.autoencoder import NearestCodeQuantizer

    torch.manual_seed(0)
    reference = VectorQuantizer(1000, 3, beta=0.25)
    chunked = VectorQuantizer(1000, 3, beta=0.25)
    chunked.load_state_dict(reference.state_dict())
    chunked.__class__ = NearestCodeQuantizer
    chunked.chunk = 5000  # 5 latent vectors per chunk: many chunks
    z_ref = torch.randn(2, 3, 8, 8, requires_grad=True)
    z_new = z_ref.detach().clone().requires_grad_()
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    q_ref, loss_ref, (_, _, codes_ref) = reference(z_ref)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q_new, loss_new, (_, _, codes_new) = chunked(z_new)
    assert torch.equal(codes_ref, codes_new) and torch.equal(q_ref, q_new) and torch.equal(loss_ref, loss_new)
    (q_ref.sum() + loss_ref).backward()
    (q_new.sum() + loss_new).backward()
    assert torch.equal(z_ref.grad, z_new.grad)
    assert torch.equal(reference.embedding.weight.grad, chunked.embedding.weight.grad)
    assert max(saved) < 1000 * 128  # nothing of the 128 × 1000 distance matrix

    vq = rdiff.create_backbone("ldm-unet", preset="tiny", autoencoder="vq", image_skip=False, latent_channels=3)
    assert isinstance(vq.autoencoder.quantize, NearestCodeQuantizer)
    assert "quantize.embedding.weight" in vq.autoencoder.state_dict()  # saved as diffusers saves it


# --- sampling around the condition -------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_an_untrained_residual_denoiser_samples_exactly_the_fast_path(name):
    # x̂₀ = c + r with r's output layer zero-initialised: whatever the noise, steps, eta or tiling, the
    # sampler must return the condition, i.e. the fast path, so sampling can only add to what it gets right
    torch.manual_seed(0)
    backbone = rdiff.create_backbone(name, preset="tiny")
    lq = images(size=64)
    fast = backbone.enhance(lq, path="fast")
    for steps, eta in ((1, 0.0), (4, 1.0)):
        sampled = backbone.enhance(lq, path="sample", options=DDIMOptions(steps=steps, eta=eta),
                                   generator=torch.Generator().manual_seed(3))
        assert torch.equal(sampled, fast)
    assert torch.equal(backbone.enhance(lq, path="sample", tile=32, overlap=16), backbone.enhance(lq, path="fast", tile=32, overlap=16))
    with torch.no_grad():
        backbone.denoiser_output().weight.normal_(0.0, 0.02)  # a residual that is not zero changes the output
    assert not torch.equal(backbone.enhance(lq, path="sample"), fast)


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_sampling_starts_where_the_residual_denoiser_trained(steps):
    backbone = tiny("ldm-unet")
    timesteps = backbone.ddim_scheduler(steps).timesteps
    last = backbone.last_timestep()
    assert last == round(backbone.config.sample_strength * 1000)
    assert len(timesteps) == steps and timesteps[0] < last and timesteps[0] >= last - 1000 // steps - 1
    assert torch.all(timesteps[:-1] > timesteps[1:])


@pytest.mark.parametrize("name", ["ldm-unet", "dit"])
def test_later_steps_train_on_the_denoisers_own_estimate(name):
    """With ``estimate_inputs`` 1 the noisy training input is the first-step estimate noised, not the clean
    latent noised: a zero residual's estimate is the condition itself, so the input carries no target."""
    backbone = rdiff.create_backbone(name, preset="tiny", estimate_inputs=1.0)
    seen = []
    original = backbone.predict
    backbone.predict = lambda sample, t: (seen.append(sample.detach().clone()), original(sample, t))[1]
    target, condition = torch.randn(2, 6, 8, 8) * 5 + 20, torch.zeros(2, 6, 8, 8)
    backbone.diffusion_loss(target, condition)
    noisy = seen[-1][:, :6]
    assert len(seen) == 2 and noisy.abs().max() < 6  # noised zeros, where the target is about 20
    backbone.config.estimate_inputs = 0.0
    backbone.diffusion_loss(target, condition)
    assert seen[-1][:, :6].mean() > 5 and len(seen) == 3  # one pass only, from the clean latent


def test_estimate_inputs_out_of_range_is_one_sentence():
    with pytest.raises(rdiff.UserError, match=r"model.estimate_inputs' must be in \[0, 1\], not 2"):
        rdiff.create_backbone("ldm-unet", preset="tiny", estimate_inputs=2)


def test_phase_one_degrades_the_whole_image_then_crops_the_same_window():
    import numpy as np

    from rdiff.data import CleanCrops, Item

    class Halving:  # a stand-in modality: its degradation is known exactly
        def degrade(self, image, roi, rng):
            return image * 0.5, {}

    yy, xx = np.mgrid[0:96, 0:80] / 96.0
    image = np.stack([yy, xx, yy * xx], axis=-1).astype(np.float32)
    item = Item(image=image, roi=np.ones((96, 80), bool), source="ramp")
    crops = CleanCrops([item], 32, 4, seed=0, modality=Halving())
    for index in range(4):
        batch = crops[index]
        assert torch.allclose(batch["degraded"], batch["clean"] * 0.5)
    assert "degraded" not in CleanCrops([item], 32, 1, seed=0)[0]
    whole = CleanCrops([item], 128, 1, seed=0, modality=Halving())[0]  # a stage that looks across whole images
    assert whole["clean"].shape[-2:] == (128, 128) and float(whole["roi"].sum()) == 96 * 80  # on a black canvas


def test_the_phase_one_corrector_sees_whole_images_and_corrects_every_path():
    """``model.corrector``: a stage of its own between autoencoder and denoiser, on whole images at the working
    scale; zero-initialised it is the identity, trained it changes the fast path and the sampling path alike."""
    from types import SimpleNamespace

    backbone = rdiff.create_backbone("ldm-unet", preset="tiny")
    assert backbone.stages == ("autoencoder", "corrector", "denoiser") and "corrector" in backbone.networks()
    train = SimpleNamespace(image_size=64, resize=256)
    assert [backbone.stage_image_size(s, train) for s in backbone.stages] == [64, 256, 256]
    plain = rdiff.create_backbone("ldm-unet", preset="tiny", corrector=False)
    assert plain.stages == ("autoencoder", "denoiser") and plain.stage_image_size("denoiser", train) == 64
    plain.load_state_dict({k: v for k, v in backbone.state_dict().items() if not k.startswith("corrector.")})
    lq = images(size=64)
    assert torch.equal(backbone.enhance(lq, path="fast"), plain.enhance(lq, path="fast"))
    clean = images(size=64, seed=1)
    loss, logs = backbone.reconstruction_loss("corrector", clean, roi_of(clean), degraded=clean * 0.7)
    loss.backward()
    assert logs["corrector"] > 0 and all(p.grad is not None for p in backbone.stage_parameters("corrector"))
    with torch.no_grad():
        backbone.corrector.whole[-1].bias.fill_(0.05)  # a trained corrector: a gain and an offset
    for path in ("fast", "sample"):
        assert not torch.allclose(backbone.enhance(lq, path=path), plain.enhance(lq, path=path), atol=1e-3)
    # the denoiser stage corrects the whole degraded image, then crops both to adapt_crop
    loss, _ = backbone.reconstruction_loss("denoiser", images(size=128), roi_of(images(size=128)),
                                           degraded=images(size=128) * 0.5)
    assert torch.isfinite(loss)
