"""Child processes for the fault-injection tests in ``test_robustness.py``.

Run as ``python tests/_fault_scripts.py MODE JSON`` with ``src`` on ``PYTHONPATH``. Each mode
starts a long piece of real work, prints ``READY`` (flushed) once it is well under way, and
then keeps working until the parent kills it with SIGKILL. Nothing here cleans up: the point
is to see what a hard kill leaves behind.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def _say(text: str) -> None:
    print(text, flush=True)


def restore_zarr(args: dict) -> None:
    """``restore_to_zarr_iter`` over many blocks; READY after the first block is written."""
    from napari_emdiffuse.engine.events import Progress
    from napari_emdiffuse.api import restore_to_zarr_iter

    image = np.load(args["image"])
    gen = restore_to_zarr_iter(
        image, args["out"], "denoise", args["model"], block=args["block"], steps=args["steps"],
        tile=32, overlap=8, batch=2, device="cpu",  # batch 2: many batches, so the kill lands mid-run
        resume=args.get("resume", False),
    )  # fmt: skip
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "block" and ev.done >= args.get("ready_after", 1):
            _say(f"READY block {ev.done}/{ev.total}")
    _say("FINISHED")


def isotropic_zarr(args: dict) -> None:
    """``reconstruct_isotropic_iter(out=...zarr)``; READY after a few sampling batches."""
    from napari_emdiffuse.engine.events import Progress
    from napari_emdiffuse.engine.inference.volume import reconstruct_isotropic_iter

    vol = np.load(args["volume"])
    gen = reconstruct_isotropic_iter(
        vol, args["factor"], args["model"], out=args["out"], block=args["block"], steps=args["steps"],
        tile=32, overlap=8, batch=2, device="cpu",  # batch 2: many batches, so the kill lands mid-run
        resume=args.get("resume", False),
    )  # fmt: skip
    n = 0
    for ev in gen:
        if isinstance(ev, Progress):
            n += 1
            if n == args.get("ready_after", 20):
                _say(f"READY {ev.done}/{ev.total}")
    _say("FINISHED")


def train(args: dict) -> None:
    """``train_iter`` for very many iterations; prints ``ITER n`` after every iteration."""
    from napari_emdiffuse.engine.events import Progress
    from napari_emdiffuse.engine.training.config import TrainConfig
    from napari_emdiffuse.engine.training.finetune import train_iter

    cfg = TrainConfig(**args["config"])
    for ev in train_iter(cfg):
        if isinstance(ev, Progress) and ev.stage == "training":
            _say(f"ITER {ev.done}")
    _say("FINISHED")


MODES = {"restore_zarr": restore_zarr, "isotropic_zarr": isotropic_zarr, "train": train}


if __name__ == "__main__":
    torch.set_num_threads(1)  # the test machine is small and busy
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
