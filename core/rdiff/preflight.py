"""Checks a run makes before it spends the user's time: everything it will need later must be there now.

Phase 1 and phase 2 load their training images first thing, so a bad folder fails at once; the held-out
images, though, are only read for the evaluation at the very end. A preset whose crops do not fit them
used to train both phases (minutes to days) and then stop. :func:`check` loads them up front.
"""

from __future__ import annotations

from typing import Any

from rdiff.config import RunConfig


def check(config: RunConfig, modality: Any, phases: tuple[str, ...]) -> None:
    """Raise :class:`rdiff.errors.UserError` now for data the run would refuse later."""
    from rdiff.data import load_items

    train = config.train
    if "reconstruct" in phases or ("adapt" in phases and not config.pairs):
        load_items(modality, config.data, "train", train.resize, train.image_size, train.bad_images)
    # the evaluation that ends every run
    load_items(modality, config.data, "heldout", train.resize, train.image_size, train.bad_images)
