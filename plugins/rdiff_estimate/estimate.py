"""Memory and compute of a run configuration, before it runs (``rdiff train --dry-run``).

The question it answers: "will the paper preset fit my 24 GB card at batch 8?".

- Parameters come from the backbone and adaptor built on the meta device (shapes only: no memory, no
  initialisation time), so they are exact for any preset.
- Weights, gradients, AdamW state and the EMA are arithmetic on those counts: every parameter is held in
  float32 (mixed precision autocasts the computation, not the stored weights); gradients, the two AdamW
  moments and the EMA copy exist for the trainable parameters of the stage only. Under bf16/fp16 autocast
  also keeps a half-precision copy of every weight it casts during the forward pass.
- Activations are measured, not modelled: one crop at the configured size goes forward through the
  stage's real loss on the CPU, and every tensor autograd saves for the backward pass is counted once (by
  its storage), parameters excepted. That is the memory a training step holds at its peak; it is
  scaled linearly to the per-device batch. Under bf16/fp16 the saved tensors are counted at half size
  (autocast computes convolutions and matrix products, which produce almost all of them, in 16 bits).
  With gradient checkpointing the kept tensors are each checkpointed segment's inputs plus the largest
  segment's own saved tensors, which the backward pass recomputes one segment at a time.
- FLOPs are counted on the same forward pass (``torch.utils.flop_counter``) and a step is taken as three
  forward passes (the backward pass costs about twice the forward; four with gradient checkpointing,
  which runs the forward again), per sample, times the batch.

Not included: the CUDA context and the caching allocator's slack (about 0.5-1.5 GiB on a GPU), and on a
CPU the process itself (about 1 GiB of libraries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rdiff.config import RunConfig

MIB = 2 ** 20
GIB = 2 ** 30


@dataclass
class StageEstimate:
    """Memory (bytes) of one training stage on one device, and its compute per optimiser step."""

    stage: str
    batch: int
    total_params: int
    trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    ema: int
    autocast_copies: int
    activations: int  # at ``batch``
    activations_per_sample: int
    flops: float  # per optimiser step, at ``batch`` (× grad_accum)

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.ema + self.autocast_copies
                + self.activations)


@dataclass
class Estimate:
    backbone: str
    preset: str
    adaptor: str
    channels: int
    image_size: int
    precision: str
    gradient_checkpointing: bool
    params: dict[str, int]  # network name -> parameters; "adaptor" for the phase-2 adaptor
    stages: list[StageEstimate] = field(default_factory=list)
    measure_seconds: float = 0.0

    @property
    def peak(self) -> StageEstimate:
        return max(self.stages, key=lambda s: s.total)


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def estimate(config: RunConfig, phases: tuple[str, ...] = ("reconstruct", "adapt"),
             measure: bool = True) -> Estimate:
    """The estimate for ``config`` (a resolved :class:`RunConfig`); ``measure=False`` leaves activations
    and FLOPs at 0 (no forward pass)."""
    from rdiff.registry import create_adaptor, create_backbone, create_modality

    train = config.train
    modality = create_modality(config.modality, **config.modality_options)
    channels = modality.channels
    with torch.device("meta"):  # shapes only
        backbone = create_backbone(config.backbone, preset=None, channels=channels, **config.model)
    networks = {name: _count(net.parameters()) for name, net in backbone.networks().items()}
    total_base = _count(backbone.parameters())
    half = train.mixed_precision in ("bf16", "fp16")
    result = Estimate(config.backbone, config.preset, config.adaptor, channels, train.image_size,
                      train.mixed_precision if half else "float32", train.gradient_checkpointing, networks)

    stage_params: list[tuple[str, int, int, int]] = []  # stage, batch, trainable, total
    if "reconstruct" in phases:
        for stage in backbone.stages:
            stage_params.append((stage, train.batch_size, _count(backbone.stage_parameters(stage)), total_base))
    if "adapt" in phases:
        with torch.device("meta"):
            adaptor = create_adaptor(config.adaptor, backbone, **config.adaptor_options)
        inside = {id(p) for p in backbone.parameters()}
        adaptor_params = list(adaptor.trainable_parameters())
        extra = _count(p for p in adaptor_params if id(p) not in inside)  # LoRA lives inside the base
        result.params["adaptor"] = _count(adaptor_params)
        trainable = _count(adaptor_params)
        if train.train_base:
            trainable += _count(backbone.finetune_parameters())
        stage_params.append(("adapt", train.adapt_batch_size, trainable, total_base + extra))
    del backbone

    measured: dict[str, tuple[int, float]] = {}
    if measure:
        started = time.perf_counter()
        measured = measure_activations(config, channels, [s for s, *_ in stage_params])
        result.measure_seconds = time.perf_counter() - started
    for stage, batch, trainable, total in stage_params:
        per_sample, flops = measured.get(stage, (0, 0.0))
        if half:
            per_sample //= 2
        result.stages.append(StageEstimate(
            stage=stage, batch=batch, total_params=total, trainable_params=trainable,
            weights=4 * total, gradients=4 * trainable, optimizer=8 * trainable,
            ema=4 * trainable if train.ema_decay > 0 else 0, autocast_copies=2 * total if half else 0,
            activations=per_sample * batch, activations_per_sample=per_sample,
            flops=(4 if train.gradient_checkpointing else 3) * flops * batch * train.grad_accum))
    return result


def measure_activations(config: RunConfig, channels: int, stages: list[str]) -> dict[str, tuple[int, float]]:
    """Per stage: bytes autograd saves for one crop (parameters excepted) and the forward FLOPs, measured
    by one forward pass of the stage's loss on the CPU in float32, with random weights and inputs."""
    from torch.utils.flop_counter import FlopCounterMode

    from rdiff.registry import create_adaptor, create_backbone

    train = config.train
    torch.manual_seed(config.seed)
    backbone = create_backbone(config.backbone, preset=None, channels=channels, **config.model)
    if train.gradient_checkpointing and hasattr(backbone, "enable_gradient_checkpointing"):
        backbone.enable_gradient_checkpointing()
    backbone.train()
    size = train.image_size
    generator = torch.Generator().manual_seed(config.seed)
    clean = torch.rand(1, channels, size, size, generator=generator)
    lq = (clean * 0.7 + 0.1 * torch.rand(clean.shape, generator=generator)).clamp(0, 1)
    roi = torch.ones(1, 1, size, size)
    out: dict[str, tuple[int, float]] = {}
    adaptor = None
    for stage in stages:
        if stage == "adapt":
            adaptor = create_adaptor(config.adaptor, backbone, **config.adaptor_options)
            trainable = list(adaptor.trainable_parameters())
            if train.train_base:
                trainable += list(backbone.finetune_parameters())
            run = lambda: backbone.adaptation_loss(lq, clean, roi)  # noqa: E731
        else:
            trainable = backbone.stage_parameters(stage)
            degraded = lq if backbone.needs_degraded(stage) else None
            run = lambda s=stage, d=degraded: backbone.reconstruction_loss(s, clean, roi, d)  # noqa: E731
        ids = {id(p) for p in trainable}
        modules = [backbone] + ([adaptor] if adaptor is not None else [])
        every = [p for m in modules for p in m.parameters()]
        for p in every:  # as the engine does: only the stage's parameters train
            p.requires_grad_(id(p) in ids)
        kept = {p.untyped_storage().data_ptr() for m in modules for p in [*m.parameters(), *m.buffers()]}
        saved: dict[int, int] = {}
        segments: list[int] = []

        def note(tensor: torch.Tensor) -> None:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in kept and tensor.device.type != "meta":
                saved[storage.data_ptr()] = storage.nbytes()

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            note(tensor)
            # a detached alias, not the tensor: a saved output would otherwise hold its own graph node, a
            # cycle autograd never frees, and every stage's activations stayed allocated to the end (the
            # paper preset's --dry-run passed 22 GB)
            return tensor.detach()

        if train.gradient_checkpointing:
            _count_segments(backbone, kept, note, segments)
        counter = FlopCounterMode(display=False)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), counter:
            result = run()
        del result
        out[stage] = (sum(saved.values()) + max(segments, default=0), float(counter.get_total_flops()))
    return out


def _count_segments(backbone: nn.Module, kept: set[int], note: Any, segments: list[int]) -> None:
    """Under gradient checkpointing a segment (what each network hands to its checkpoint function) keeps
    only its inputs; what it computes inside exists while the backward pass recomputes it, one segment at
    a time. Each segment runs here unchecked with its saved tensors counted (in ``segments``) and
    released at once, so the peak is the kept tensors plus the largest segment."""
    import weakref

    def segment(module: Any, *args: Any) -> Any:
        for arg in args:
            if isinstance(arg, torch.Tensor):
                note(arg)  # the checkpoint keeps its inputs
        live: dict[int, Any] = {}
        total = 0

        def pack(tensor: torch.Tensor) -> None:
            nonlocal total
            pointer = tensor.untyped_storage().data_ptr()
            if pointer in kept or tensor.device.type == "meta":
                return None
            owner = live.get(pointer)
            if owner is None or owner() is None:  # a storage not seen, or a freed one's address reused
                live[pointer] = weakref.ref(tensor)
                total += tensor.untyped_storage().nbytes()
            return None  # nothing kept: the measurement runs no backward pass

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = module(*args)
        segments.append(total)
        return result

    for module in backbone.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
            module._gradient_checkpointing_func = segment


# --- printing --------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M"


def format_estimate(e: Estimate, measured: bool = True) -> str:
    lines = [f"estimate for {e.backbone} preset {e.preset} ({e.channels} channels, {e.image_size}-px crops), "
             f"adaptor {e.adaptor}",
             "parameters: " + ", ".join(f"{name} {n:,}" for name, n in e.params.items())
             + f"; backbone total {sum(n for k, n in e.params.items() if k != 'adaptor'):,}",
             f"precision: {e.precision}; gradient checkpointing: {'on' if e.gradient_checkpointing else 'off'}",
             ""]
    head = ["stage", "batch", "trainable", "weights", "gradients", "AdamW", "EMA", "autocast", "activations",
            "total", "GFLOP/step"]
    rows = [[s.stage, str(s.batch), _millions(s.trainable_params), _size(s.weights), _size(s.gradients),
             _size(s.optimizer), _size(s.ema), _size(s.autocast_copies),
             _size(s.activations) if measured else "-", _size(s.total), f"{s.flops / 1e9:,.0f}" if measured else "-"]
            for s in e.stages]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    peak = e.peak
    lines.append("")
    lines.append(f"peak per device: {_size(peak.total)} (stage {peak.stage} at batch {peak.batch}); on a GPU add "
                 f"the CUDA context and allocator slack, about 0.5-1.5 GiB")
    if measured:
        per = _size(peak.activations_per_sample)
        lines.append(f"activations: {per} per {e.image_size}-px crop in stage {peak.stage}, measured by one forward "
                     f"pass on the CPU ({e.measure_seconds:.0f} s)"
                     + ("; halved for 16-bit autocast" if e.precision != "float32" else ""))
    return "\n".join(lines)


def dry_run(config: RunConfig, phases: tuple[str, ...]) -> int:
    """``rdiff train --dry-run``: the data checks a run makes first, then the estimate; trains nothing."""
    from rdiff import preflight
    from rdiff.registry import create_modality

    preflight.check_run(config, config.out or ".", phases=phases)
    preflight.check_heldout(config, create_modality(config.modality, **config.modality_options))
    print(f"data: {config.data or 'the embedded ' + config.modality + ' sample'} holds what the run needs")
    print(format_estimate(estimate(config, phases)))
    return 0


# --- checking the estimate against a measured peak -------------------------------------------------------


def measure_step_peak(config: RunConfig, stage: str, steps: int = 2) -> dict[str, float]:
    """Run ``steps`` real training steps of ``stage`` on the CPU in this process (as the engine does:
    AdamW, gradient clipping, EMA when configured, float32) and return the peak resident memory above what
    the process held before building the model, in bytes, with the seconds per step. Run it in a fresh
    process (``python -m rdiff_estimate.estimate``): freed memory the allocator keeps would count otherwise."""
    import psutil

    from rdiff.registry import create_adaptor, create_backbone, create_modality

    train = config.train
    modality = create_modality(config.modality, **config.modality_options)
    torch.manual_seed(config.seed)
    backbone = create_backbone(config.backbone, preset=None, channels=modality.channels, **config.model)
    if train.gradient_checkpointing and hasattr(backbone, "enable_gradient_checkpointing"):
        backbone.enable_gradient_checkpointing()
    backbone.train()
    if stage == "adapt":
        adaptor = create_adaptor(config.adaptor, backbone, **config.adaptor_options)
        params = list(adaptor.trainable_parameters())
        batch = train.adapt_batch_size
    else:
        params = backbone.stage_parameters(stage)
        batch = train.batch_size
    ids = {id(p) for p in params}
    for p in backbone.parameters():
        p.requires_grad_(id(p) in ids)
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)
    ema = None
    if train.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=train.ema_decay)
    size, channels = train.image_size, modality.channels

    def step_once(batch: int, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        clean = torch.rand(batch, channels, size, size, generator=generator)
        lq = (clean * 0.7 + 0.1 * torch.rand(clean.shape, generator=generator)).clamp(0, 1)
        roi = torch.ones(batch, 1, size, size)
        if stage == "adapt":
            out = backbone.adaptation_loss(lq, clean, roi)
        else:
            out = backbone.reconstruction_loss(stage, clean, roi, lq if backbone.needs_degraded(stage) else None)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        if train.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)

    # A first step on a small crop the backbone takes (at least 32 px: SSIM's window is 11) pages in the
    # libraries' code and kernel caches (about 0.35 GiB of resident memory on this CPU, whatever the model):
    # process overhead, not the run's. It is subtracted; the model's weights and this step's optimizer
    # state are counted back in.
    multiple = int(getattr(backbone, "size_multiple", 8) or 8)
    step_once(1, multiple * -(-32 // multiple), 10_000)
    optimizer.state.clear()
    model_bytes = sum(t.numel() * t.element_size() for t in [*backbone.parameters(), *backbone.buffers()])
    if ema is not None:
        model_bytes += sum(t.numel() * t.element_size() for t in ema.shadow_params)
    before = psutil.Process().memory_info().rss - model_bytes
    lifetime = not _reset_peak()
    times = []
    for step in range(steps):
        started = time.perf_counter()
        step_once(batch, size, step)
        times.append(time.perf_counter() - started)
    return {"peak_bytes": float(_peak_rss(lifetime) - before), "seconds_per_step": min(times)}


def _reset_peak() -> bool:
    """Start the resident-memory high-water mark afresh (Linux). The process's lifetime maximum would also
    hold what building the model briefly took, and, in a process started from a larger one, the parent's
    size: Linux carries the pre-exec memory's high-water mark into ``ru_maxrss`` (a measurement started
    from a pytest or --dry-run process of 2.6 GiB measured at least that)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss(lifetime: bool) -> int:
    """Peak resident memory in bytes since :func:`_reset_peak`, or over the process's life."""
    if not lifetime:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measured_peak(config_layers: list[dict[str, Any]], stage: str, steps: int = 2) -> dict[str, float]:
    """:func:`measure_step_peak` in a fresh Python process (``config_layers`` as for ``resolve_config``)."""
    import json
    import subprocess
    import sys

    import os

    # glibc's malloc raises its mmap threshold as large blocks are freed, then keeps later blocks of that size
    # in a heap it seldom returns: the resident peak would count memory freed long before. A fixed threshold
    # gives every large tensor its own mapping, returned when freed, so the peak is what was live at once
    # (closer to a GPU's caching allocator, which reuses freed blocks).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-m", "rdiff_estimate.estimate", json.dumps(config_layers), stage, str(steps)],
                          capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the memory measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    import json

    from rdiff.registry import resolve_config

    config = resolve_config(json.loads(argv[0]))
    print(json.dumps(measure_step_peak(config, argv[1], int(argv[2]))))


if __name__ == "__main__":  # pragma: no cover
    import sys

    _main(sys.argv[1:])
