"""What a resumable training checkpoint holds besides weights: the process's place in a
``torchrun`` launch and the state of every random generator, as tensors and strings so the
file loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_FORMAT", "dist_env", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = "napari-emdiffuse-train/1"


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process; (0, 1, 0) outside ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def rng_state(data_rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    """Every generator a run draws from, as tensors and strings (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "torch_gen": gen.get_state(),
        "numpy_global": json.dumps(
            [np_state[0], np_state[1].tolist(), *[float(v) if isinstance(v, float) else int(v) for v in np_state[2:]]]
        ),
        "python": json.dumps([py[0], list(py[1]), py[2]]),
        "data": json.dumps(data_rng.bit_generator.state),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], data_rng: np.random.Generator, gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["torch_gen"])
    npg = json.loads(state["numpy_global"])
    np.random.set_state((npg[0], np.asarray(npg[1], dtype=np.uint32), *npg[2:]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    data_rng.bit_generator.state = json.loads(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # different GPU count: continue with fresh CUDA streams
            pass
