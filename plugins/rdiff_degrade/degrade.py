"""``rdiff degrade``: degraded copies of images plus the sampled parameters, reproducible per seed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rdiff.checkpoints import write_json
from rdiff.errors import UserError
from rdiff.images import expand_inputs, plan_outputs
from rdiff.modality import Modality
from rdiff.training import progress


def degrade_files(modality: Modality, inputs: list[str], out_dir: str | Path, seed: int = 0) -> int:
    """Write ``out_dir/<name>`` (same format and bit depth) and ``out_dir/<stem>.json`` per input file.
    The random stream of a file depends on the seed and the file's relative name only, so the same
    seed gives the same output whatever other files are processed. Returns 2 if any file failed."""
    out_dir = Path(out_dir)
    # refused before anything is written: a degraded copy must never replace a clean original
    files = plan_outputs(expand_inputs(inputs, modality.suffixes), out_dir, lambda rel: [rel, rel.with_suffix(".json")])
    failed = 0
    for file, rel, (target, record) in progress(files, desc="degrade", unit="file", disable=len(files) < 2):
        try:
            images = modality.read_stack(file)
        except UserError as exc:
            print(f"rdiff: skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        name_seed = [seed, *rel.as_posix().encode()]
        results, params = [], []
        for k, image in enumerate(images):
            rng = np.random.default_rng([*name_seed, k])
            degraded, p = modality.degrade(image, modality.roi(image), rng)
            results.append(degraded)
            params.append(p)
        modality.write_stack(target, results, like=file)
        write_json(record, {"source": str(file), "seed": seed, "params": params if len(params) > 1 else params[0]})
    print(f"rdiff: degraded {len(files) - failed} file(s) into '{out_dir}'" + (f", {failed} failed" if failed else ""))
    return 2 if failed else 0
