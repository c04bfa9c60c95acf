"""benchmarks/gpu_check.sh on a machine without a GPU: one sentence, a non-zero exit, nothing done."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_refuses_cleanly_without_a_gpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path),
           # the environment rdiff is installed in comes first, as after `. .venv/bin/activate`
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(SCRIPT), str(work)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert done.stdout == ""
    message = done.stderr.strip()
    assert message.count("\n") == 0 and message.endswith(".")  # one sentence
    assert "no CUDA GPU is visible" in message
    assert not work.exists() and not list(tmp_path.iterdir())  # nothing written before refusing
