"""What a resumable training checkpoint holds besides weights: the process's place in a
``torchrun`` launch and the state of every random generator, as tensors and strings so the
file loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EMDiffuseError, ModelFileError

__all__ = ["CHECKPOINT_FORMAT", "check_fingerprint", "dist_env", "fingerprint", "read_checkpoint", "rng_state",
           "set_rng_state"]

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


def fingerprint(card: Any, config: Any, data_description: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run (its model ``card``, its recipe ``config`` and what its data
    describes) that must not change between the run and its resumption."""
    digest = hashlib.sha1(json.dumps(dict(data_description), sort_keys=True, default=str).encode()).hexdigest()
    return {
        "task": card.task,
        "kind": card.kind,
        "network": card.network.model_dump(mode="json"),
        "patch": config.patch,
        "batch": config.batch,
        "seed": config.seed,
        "data": digest,
    }


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file's state (weights_only); one line where it is not one of ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"cannot resume from '{path}': {reason}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"'{path}' is not a napari-emdiffuse training checkpoint")
    return state


def check_fingerprint(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose settings changed (:func:`fingerprint`), naming the first."""
    for key in now:
        if saved.get(key) != now[key]:
            raise EMDiffuseError(
                f"cannot resume: the checkpoint was made with {key}={saved.get(key)!r}, this run has "
                f"{now[key]!r}; use the same settings or start afresh (resume: false)"
            )
