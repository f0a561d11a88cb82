"""The dask runner: one GPU per local worker, options resolved on the worker, bad clusters refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_emdiffuse.engine.errors import InputError
from napari_emdiffuse.engine.inference.blocks import BlockPlan
from napari_emdiffuse.engine.inference.canvas import resolve_options
from napari_emdiffuse.engine.inference.normalise import NormInfo
from napari_emdiffuse.engine.parallel import runner
from tests.conftest import make_tiny


@pytest.mark.parametrize(
    "n, device, visible, expected",
    [
        (4, "auto", ["0", "1"], ["0", "1", "0", "1"]),
        (2, "cuda", ["3"], ["3", "3"]),
        (2, "cuda:1", ["0", "1"], [None, None]),  # an explicit GPU: every worker uses it
        (3, "cpu", ["0", "1"], [None, None, None]),
        (2, "auto", [], [None, None]),  # no GPU here
    ],
)
def test_local_workers_get_one_gpu_each(n, device, visible, expected):
    assert runner.gpu_assignment(n, device, visible) == expected


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert runner._visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runner._visible_gpus() == []


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"workers": 2, "scheduler": "tcp://h:1"}, "not both"),
        ({"workers": 0}, "positive whole number"),
        ({"workers": True}, "positive whole number"),
        ({"scheduler": " "}, "address"),
        ({}, "needs workers"),
    ],
)
def test_bad_clusters_are_refused(kw, match):
    with pytest.raises(InputError, match=match):
        runner.Cluster(**kw)


def test_workers_resolve_options_for_their_own_device():
    """The client may have no GPU: batch and precision come from the worker's device, the
    tiling from the client's plan (it shapes the blocks)."""
    m = make_tiny("denoise")
    client = resolve_options(m, torch.device("cpu"), preset="fast", tile=48, overlap=8)
    plan = BlockPlan.make((100, 100), block=64, opts=client)
    job = runner.BlockJob(
        "restore", "tiny", None, "cpu", "src", "", "dst", None, plan, (0, 0, 0),
        NormInfo("percentile", 0.0, 255.0), {"preset": "fast", "steps": 3}, client.tile, client.overlap, "|u1",
    )  # fmt: skip
    job = pickle.loads(pickle.dumps(job))  # what a worker receives
    opts = runner.worker_options(m, job)
    assert (opts.tile, opts.overlap, opts.steps) == (48, 8, 3)
    assert opts.batch == 2  # the CPU default; a CUDA worker resolves 8
    assert np.dtype(job.dtype) == np.uint8
