"""Never lose work: distributed training, kill -9 then --resume, damaged checkpoints. Toy plugin, CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TOY = ["--backbone", "toy", "--modality", "toy", "--adaptor", "toy-adaptor", "--preset", "tiny"]
ENV = {**os.environ, "RDIFF_DISABLE_PLUGIN_AUTOLOAD": "1", "RDIFF_PLUGINS": "toy_plugin",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def logged_steps(run: Path, stage: str) -> list[int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("stage") == stage and "loss" in r]


@pytest.mark.slow
def test_two_process_training_writes_one_report(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "ddp"
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "rdiff", "train", *TOY, "--out", str(out)],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["crops"] == 4
    assert logged_steps(out, "autoencoder") == [1, 2, 3, 4]  # one writer: no line twice
    assert result.stdout.count("run directory:") == 1  # only the main process reports


@pytest.mark.slow
def test_kill_9_then_resume_continues_the_step_count(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "rdiff", "train", *TOY, "--out", str(out),
            "--set", "train.steps={autoencoder: 600}", "--set", "train.checkpoint_every=25",
            "--set", "train.log_every=5"]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = out / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 12:  # past two checkpoints
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = logged_steps(out, "autoencoder")[-1]
    assert 0 < killed_at < 600, "the run should have been killed mid-phase"
    resumed = subprocess.run([sys.executable, "-m", "rdiff", "train", "--out", str(out), "--resume"],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming phase reconstruct (autoencoder) at step" in resumed.stderr + resumed.stdout
    resumed_from = int((resumed.stderr + resumed.stdout).split("at step ")[1].split()[0])
    assert killed_at - 30 <= resumed_from <= killed_at  # at most one checkpoint interval lost
    assert logged_steps(out, "autoencoder") == list(range(5, 601, 5))  # no restart from step 0, no repeats
    assert (out / "report.json").is_file()


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(toy, tmp_path, recwarn):
    from rdiff.registry import resolve_config
    from rdiff.engine import Engine

    def config(steps):
        return resolve_config([{"backbone": "toy", "modality": "toy", "adaptor": "toy-adaptor"},
                               {"train": {"steps": {"autoencoder": steps}, "checkpoint_every": 2}}])

    engine = Engine(config(6), tmp_path)
    engine.save_config()
    engine.reconstruct()
    (tmp_path / "reconstruct" / "stages.json").unlink()  # as if the stage had not ended
    weights = tmp_path / "reconstruct" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short on disk
    resumed = Engine(config(8), tmp_path, resume=True)
    resumed.reconstruct()
    assert any("is damaged" in str(w.message) for w in recwarn.list)
    assert logged_steps(tmp_path, "autoencoder") == [1, 2, 3, 4, 5, 6, 7, 8]
    info = json.loads((tmp_path / "reconstruct" / "checkpoint" / "manifest.json").read_text())["info"]
    assert info["step"] == 8
