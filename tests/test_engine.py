"""The two-phase engine on the toy plugin: run directory contract, frozen base, early stopping, resume."""

from __future__ import annotations

import json

import pytest
import torch

import rdiff
from rdiff.engine import run
from rdiff.registry import resolve_config


def toy_config(tmp_path, **sets):
    layers = [{"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor", "preset": "tiny", "out": str(tmp_path)}]
    for key, value in sets.items():
        section, name = key.split("__")
        layers.append({section: {name: value}})
    return resolve_config(layers)


def test_two_phase_run_writes_the_run_directory_contract(toy, tmp_path):
    report = run(toy_config(tmp_path), tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "report.json", "reconstruct/stages.json",
                 "reconstruct/autoencoder/model.safetensors", "adapt/adaptor.safetensors"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ("backbone", "modality", "adaptor", "preset", "params", "eval", "time_s"):
        assert key in on_disk
    assert set(on_disk["params"]) >= {"total", "trainable"}
    assert 0 < on_disk["params"]["trainable"] < on_disk["params"]["total"]
    ev = on_disk["eval"]
    assert {"input", "enhanced", "paths"} <= set(ev) and "fast" in ev["paths"]
    assert {"psnr", "ssim"} <= set(ev["input"]) and ev["crops"] == 4
    assert set(on_disk["time_s"]) >= {"reconstruct", "adapt"}
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s.get("stage") == "autoencoder" and "loss" in s] == [1, 2, 3, 4]


def test_phase_two_trains_only_the_adaptor(toy, tmp_path):
    from rdiff.engine import Engine

    engine = Engine(toy_config(tmp_path), tmp_path)
    engine.reconstruct()
    before = {k: v.clone() for k, v in engine.backbone.state_dict().items()}
    engine.adapt()
    after = engine.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "phase 2 changed the frozen base"
    adaptor = engine.backbone.adaptor
    assert {id(p) for p in engine.backbone.parameters() if p.requires_grad} == set()
    assert all(p.requires_grad for p in adaptor.trainable_parameters())


def test_best_adaptor_is_kept_by_validation(toy, tmp_path):
    report = run(toy_config(tmp_path, train__adapt_steps=6, train__val_every=2), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_psnr"] for r in lines if "val_psnr" in r}
    assert sorted(vals) == [0, 2, 4, 6]
    best_step = max(vals, key=lambda s: (vals[s], -s))
    assert report["adapt"]["best_step"] == best_step


def test_resume_continues_where_the_checkpoint_left_off(toy, tmp_path):
    from rdiff.engine import Engine

    full = tmp_path / "full"
    run(toy_config(full, train__steps={"autoencoder": 6}), full)
    # a run stopped after its step-4 checkpoint: rerun only up to there, then resume the longer schedule
    part = tmp_path / "part"
    engine = Engine(toy_config(part, train__steps={"autoencoder": 4}, train__checkpoint_every=4), part)
    engine.save_config()
    engine.reconstruct()
    (part / "reconstruct" / "stages.json").unlink()  # as if killed before the stage ended
    resumed = Engine(toy_config(part, train__steps={"autoencoder": 6}), part, resume=True)
    resumed.reconstruct()
    a = rdiff.load_run.__module__  # noqa: F841 - the API is importable
    full_w = Engine(toy_config(full), full).backbone
    full_w.load(full / "reconstruct")
    for (k, v), w in zip(resumed.backbone.state_dict().items(), full_w.state_dict().values()):
        assert torch.equal(v, w), f"{k} differs after resume"
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("stage") == "autoencoder" and "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nonfinite_loss_stops_the_run_with_a_message(toy, tmp_path, monkeypatch):
    from toy_components import ToyBackbone

    from rdiff.errors import TrainingStopped

    monkeypatch.setattr(ToyBackbone, "reconstruction_loss",
                        lambda self, stage, clean, roi, degraded=None: (self.encode(clean) * float("nan")).mean())
    with pytest.raises(TrainingStopped, match="not finite for 3 consecutive steps"):
        run(toy_config(tmp_path, train__max_bad_steps=3, train__steps={"autoencoder": 20}), tmp_path)
