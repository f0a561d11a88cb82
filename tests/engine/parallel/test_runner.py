"""The dask runner: one GPU per local worker, options resolved on the worker, bad clusters refused."""

from __future__ import annotations

import pickle
from dataclasses import replace

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
        "restore", "tiny", None, "cpu", "src", "", "dst", None, plan, ((0, 0, 0),),
        NormInfo("percentile", 0.0, 255.0), {"preset": "fast", "steps": 3}, client.tile, client.overlap, "|u1",
    )  # fmt: skip
    job = pickle.loads(pickle.dumps(job))  # what a worker receives
    opts = runner.worker_options(m, job)
    assert (opts.tile, opts.overlap, opts.steps) == (48, 8, 3)
    assert opts.batch == 14  # the CPU default for 48-px tiles (32768 px); a CUDA worker resolves 8
    assert np.dtype(job.dtype) == np.uint8


def test_z_filter_jobs_split_over_tiles_equal_one_pass(tmp_path):
    """Workers score their tiles apart and filter them apart: summed scores pick the same
    width, and the stores (output and uncertainty, fill kept) hold the same pixels as one
    pass over the whole stack in memory."""
    import zarr

    from napari_emdiffuse.engine.events import drain
    from napari_emdiffuse.engine.inference.zfilter import WIDTHS, ZFilter, lateral_tiles, smooth_along_z

    rng = np.random.default_rng(5)
    truth = np.repeat(rng.normal(100, 20, (1, 40, 30)), 9, axis=0)
    image = (truth + rng.normal(0, 10, truth.shape)).astype(np.float32)
    image[:, :4, :4] = -1.0  # fill: kept, never averaged
    out = (truth + rng.normal(0, 4, truth.shape)).astype(np.float32)
    out[:, :4, :4] = -1.0
    unc = rng.uniform(2, 4, out.shape).astype(np.float32)
    stores = {}
    for name, arr in (("in", image), ("out", out), ("unc", unc)):
        stores[name] = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="w", shape=arr.shape, dtype=arr.dtype, chunks=(1, 16, 16))
        stores[name][:] = arr
    tiles = lateral_tiles(out.shape, (1, 16, 16))
    base = runner.ZFilterJob(str(tmp_path / "in.zarr"), "", str(tmp_path / "out.zarr"), str(tmp_path / "unc.zarr"), (), -1.0)
    halves = [tuple(tiles[:3]), tuple(tiles[3:])]

    losses = [runner.run_z_filter_job(pickle.loads(pickle.dumps(replace(base, tiles=h, widths=WIDTHS)))) for h in halves]
    width = WIDTHS[int(np.argmin(np.sum(losses, axis=0)))]
    for h in halves:
        assert runner.run_z_filter_job(replace(base, tiles=h, width=width)) is None
    mem_out, mem_unc = out.copy(), unc.copy()
    assert drain(smooth_along_z(mem_out, mem_unc, image, ZFilter(WIDTHS, ""), fill=-1.0)) == width
    got = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    assert np.array_equal(got, mem_out) and not np.array_equal(got, out)
    got_unc = zarr.open_array(str(tmp_path / "unc.zarr"), mode="r")[:]
    assert np.array_equal(got_unc, mem_unc) and not np.array_equal(got_unc, unc)
    assert (got[:, :4, :4] == -1.0).all()


def test_local_workers_keep_glibcs_adaptive_malloc(monkeypatch):
    """dask's default MALLOC_TRIM_THRESHOLD_ made block tasks 1.7x slower: a local cluster's
    workers start without it, unless the user's environment sets it. The workers' settings
    do not leak into this process's environment (processes started later would inherit them)."""
    import os

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    client, cluster = runner.connect(1, None)
    try:
        got = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        threads = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    finally:
        client.close()
        cluster.close()
    assert list(got.values()) == [None]
    assert list(threads.values()) == ["1"]  # dask's other settings stay
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ and "OMP_NUM_THREADS" not in os.environ


def test_a_worker_restarted_mid_run_leaves_this_environment_as_it_was(monkeypatch):
    """A restarted worker's nanny sets OMP_NUM_THREADS=1 (and the rest) here again; the run's
    client context puts the environment back when the run ends."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("EMDIFFUSE_TEST_KEPT", "yes")
    with runner.cluster_client(1, None) as client:
        client.restart()
        restarted = os.environ.get("OMP_NUM_THREADS")  # dask set it while the run goes on
        os.environ["EMDIFFUSE_TEST_KEPT"] = "changed"
    assert restarted == "1"  # the control: without the context, it would stay
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["EMDIFFUSE_TEST_KEPT"] == "yes"


def test_staging_copies_slice_by_slice_and_stops_when_closed(tmp_path):
    """An input that is not a zarr store on disk is copied for the workers one slice at a
    time, saying so; closing the generator stops the copy there."""
    import zarr

    from napari_emdiffuse.engine.events import drain

    vol = np.arange(5 * 4 * 3, dtype=np.uint16).reshape(5, 4, 3)
    gen = runner.stage_input(vol, tmp_path / "a.zarr")
    events = [next(gen) for _ in range(3)]
    gen.close()
    assert events[0].stage == "note" and "copying the input" in events[0].message
    assert [(e.stage, e.done, e.total) for e in events[1:]] == [("staging", 1, 5), ("staging", 2, 5)]
    part = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert np.array_equal(part[:2], vol[:2]) and not part[2:].any()  # stopped after slice 2
    path = drain(runner.stage_input(vol, tmp_path / "b.zarr"))
    got = zarr.open_array(path, mode="r")
    assert np.array_equal(got[:], vol) and got.chunks == (1, 4, 3) and got.dtype == vol.dtype


def test_a_cluster_run_resumes_a_stopped_run(tmp_path):
    """A resumable run stopped on 2 local workers keeps the blocks they finished; the next
    run submits only the others, on the workers again, and ends with the pixels of one
    uninterrupted run in this process (1 grey level of float ordering between processes)."""
    import zarr
    from scipy.ndimage import gaussian_filter

    from napari_emdiffuse.api import restore_to_zarr_iter
    from napari_emdiffuse.engine.events import Progress

    m = make_tiny("denoise")
    path = str(m.save(tmp_path / "tiny"))
    rng = np.random.default_rng(0)
    img = np.clip(128 + 400 * gaussian_filter(rng.normal(size=(48, 40)), 3) + rng.normal(0, 10, (5, 48, 40)), 0, 255)
    img = img.astype(np.uint8)
    kw = dict(block=24, steps=2, tile=32, overlap=8, batch=2, device="cpu")
    for _ in restore_to_zarr_iter(img, tmp_path / "ref.zarr", "denoise", path, **kw):
        pass
    out = tmp_path / "out.zarr"
    gen = restore_to_zarr_iter(img, out, "denoise", path, workers=2, resume=True, **kw)
    for ev in gen:
        if isinstance(ev, Progress) and ev.stage == "block" and ev.done >= 6:
            gen.close()
            break
    assert not out.exists() and len(list(tmp_path.glob("out.zarr.partial-*"))) == 1
    (work,) = tmp_path.glob(".out.zarr.work-*-resumable")  # the input's copy for the workers, kept
    assert (work / "input.zarr.staged").exists()
    events = list(restore_to_zarr_iter(img, out, "denoise", path, workers=2, resume=True, **kw))
    assert any("reading the copy of the input that an earlier run of this job made" in (e.message or "")
               for e in events[:-1])  # fmt: skip
    assert not work.exists()  # removed once the run is complete
    note = next(e.message for e in events[:-1] if e.stage == "note")
    done = int(note.split(": ")[-1].split(" of ")[0])
    assert note.startswith("resuming") and 6 <= done < 20
    submitted = [(e.stage, e.total) for e in events[:-1] if e.message == f"{e.total} tasks submitted"]
    assert submitted[0] == ("block", 20 - done)
    a = zarr.open_array(str(out), mode="r")[:].astype(np.int16)
    b = zarr.open_array(str(tmp_path / "ref.zarr"), mode="r")[:].astype(np.int16)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99


@pytest.mark.parametrize("fmt", [2, 3])
def test_workers_write_an_ome_zarr_pyramid(tmp_path, monkeypatch, fmt):
    """On a cluster the pyramid's levels are written by the workers, one level after another,
    columns of chunks (format 3: of shards) spread over the tasks: each level is the 2x2 mean
    of the one above."""
    import zarr

    if fmt == 3 and int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("zarr format 3 needs zarr-python 3")
    from napari_emdiffuse.api import restore_to_zarr_iter
    from napari_emdiffuse.engine.io import pyramid
    from napari_emdiffuse.engine.io.zarr import is_complete

    monkeypatch.setattr(pyramid, "PYRAMID_TOP", 16)  # read by the client, which plans the levels
    path = str(make_tiny("denoise").save(tmp_path / "tiny"))
    img = (np.random.default_rng(0).random((2, 72, 56)) * 255).astype(np.uint8)
    out = tmp_path / "x.ome.zarr"
    events = list(restore_to_zarr_iter(img, out, "denoise", path, workers=2, block=32, steps=2, tile=32, overlap=8,
                                       device="cpu", z_filter="off", zarr_format=fmt))  # fmt: skip
    submitted = [(e.stage, e.total) for e in events[:-1] if e.message == f"{e.total} tasks submitted"]
    assert submitted == [("block", 12), ("pyramid", 2), ("pyramid", 1), ("pyramid", 1)]
    group = zarr.open_group(str(out), mode="r")
    meta = group.attrs["ome"] if fmt == 3 else group.attrs
    assert is_complete(out) and len(meta["multiscales"][0]["datasets"]) == 4
    assert all(group[str(k)].metadata.zarr_format == fmt for k in range(4))
    for k in (1, 2, 3):
        assert np.array_equal(group[str(k)][:], pyramid.halve(group[str(k - 1)][:]))


def test_workers_restore_a_region_into_a_store(tmp_path):
    """A region of a stack on a cluster: the workers write the region's blocks where the
    plan puts them and average the region along z against its own input: the pixels of the
    run in this process."""
    import zarr

    from napari_emdiffuse.api import restore_to_zarr

    path = str(make_tiny("denoise").save(tmp_path / "tiny"))
    stack = (np.random.default_rng(3).random((3, 70, 64)) * 255).astype(np.uint8)
    kw = dict(region=(10, 60, 8, 50), block=32, steps=1, tile=32, overlap=8, device="cpu", z_filter=0.8)
    restore_to_zarr(stack, tmp_path / "here.zarr", "denoise", path, **kw)
    restore_to_zarr(stack, tmp_path / "there.zarr", "denoise", path, workers=2, **kw)
    here, there = (zarr.open_array(str(tmp_path / n), mode="r") for n in ("here.zarr", "there.zarr"))
    assert there.shape == (3, 50, 42) and there.attrs["region"] == [10, 60, 8, 50]
    assert there.attrs["z_filter"] == here.attrs["z_filter"] == 0.8
    np.testing.assert_array_equal(there[:], here[:])


def test_workers_draw_a_denoised_regions_noise_at_its_place(tmp_path):
    """An isotropic region denoised first is a volume of its own (the region and its
    context); a diffusion sampler's noise is still drawn at its place in the whole volume, on
    the workers as in this process. Control: without that offset the pixels differ."""
    import zarr

    from napari_emdiffuse.api import reconstruct_isotropic
    from napari_emdiffuse.engine.inference import blocks
    from tests.engine.inference.test_volume import _tiny

    torch.manual_seed(0)
    path = str(_tiny().save(tmp_path / "iso"))
    data = (np.random.default_rng(6).random((3, 120, 100)) * 255).astype(np.uint8)
    kw = dict(region=(70, 110, 60, 95), denoise=True, steps=2, tile=32, overlap=8, device="cpu", dtype=np.float32)
    here = reconstruct_isotropic(data, 2, path, out=tmp_path / "here.zarr", **kw)
    there = reconstruct_isotropic(data, 2, path, out=tmp_path / "there.zarr", workers=2, **kw)
    a, b = (zarr.open_array(str(tmp_path / n), mode="r")[:] for n in ("here.zarr", "there.zarr"))
    assert here.info["region"] == there.info["region"] == [70, 110, 60, 95]
    assert np.abs(a - b).max() < 0.05
    original = blocks.BlockRun.__init__

    def dropped(self, *args, **k):  # the control: the offset not handed to the workers
        k.pop("offset", None)
        original(self, *args, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocks.BlockRun, "__init__", dropped)
        reconstruct_isotropic(data, 2, path, out=tmp_path / "lost.zarr", workers=2, **kw)
    lost = zarr.open_array(str(tmp_path / "lost.zarr"), mode="r")[:]
    assert np.abs(lost - a)[1::2].mean() > 0.5  # the generated slices


def test_a_cluster_is_found_by_the_file_its_scheduler_wrote(tmp_path, capsys):
    """``scheduler=`` / ``--scheduler`` take the file a scheduler writes as it starts (``dask
    scheduler --scheduler-file``, how HPC jobs pass it): the run is the one on that cluster's
    address. A missing file, or one without an address, is refused in one line before any
    work (exit 2 at the command line, no output)."""
    import json

    import zarr
    from distributed import LocalCluster

    from napari_emdiffuse.api import restore_to_zarr
    from napari_emdiffuse.cli import main

    path = str(make_tiny("denoise").save(tmp_path / "tiny"))
    stack = (np.random.default_rng(5).random((2, 40, 36)) * 255).astype(np.uint8)
    kw = dict(block=32, steps=1, tile=32, overlap=8, device="cpu", z_filter="off")
    restore_to_zarr(stack, tmp_path / "here.zarr", "denoise", path, **kw)
    sched = tmp_path / "sched.json"
    with runner.environment_kept(), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                                 dashboard_address="127.0.0.1:0") as cluster:
        sched.write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler_address}))
        assert runner.scheduler_address(str(sched)) == cluster.scheduler_address
        restore_to_zarr(stack, tmp_path / "there.zarr", "denoise", path, scheduler=str(sched), **kw)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "there.zarr"), mode="r")[:],
                                  zarr.open_array(str(tmp_path / "here.zarr"), mode="r")[:])
    (tmp_path / "empty.json").write_text("{}")
    for where, words in [(tmp_path / "none.json", "no dask scheduler file"), (tmp_path / "empty.json", "holds no")]:
        with pytest.raises(InputError, match=words):
            restore_to_zarr(stack, tmp_path / "x.zarr", "denoise", path, scheduler=str(where), **kw)
        capsys.readouterr()
        assert main(["denoise", str(tmp_path / "here.zarr"), "-o", str(tmp_path / "y.zarr"), "--model", path,
                     "--scheduler", str(where), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not [p.name for p in tmp_path.iterdir() if "x.zarr" in p.name or "y.zarr" in p.name]  # nor partials


def _missing(job):
    open(job, "rb")  # noqa: SIM115 - raises FileNotFoundError: a path the worker does not have


def test_a_path_the_workers_cannot_reach_is_said_in_one_line(tmp_path):
    """A worker's FileNotFoundError reaches the client as one line naming the path: on a running
    cluster (a client by address) that the workers must reach it, on a local one that it went
    away. Control: another error of a worker is raised as it is. Afterwards dask computes
    locally again (no client left as its default)."""
    from distributed import Client, LocalCluster

    from napari_emdiffuse.engine.errors import EMDiffuseError
    from napari_emdiffuse.engine.events import drain

    gone = str(tmp_path / "scratch" / "in.zarr")
    with runner.environment_kept(), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                                 dashboard_address="127.0.0.1:0") as cluster:
        for make, words in [(lambda: Client(cluster), "moved or removed"),
                            (lambda: Client(cluster.scheduler_address), "must reach the input, the output and the model")]:
            with make() as client:  # one at a time: closed in turn, dask's default scheduler is put back
                with pytest.raises(EMDiffuseError, match=words) as err:
                    drain(runner.run_tasks(client, _missing, [gone], name="t"))
                assert f"a worker could not open '{gone}' (No such file or directory)" in str(err.value)
                with pytest.raises(ZeroDivisionError):
                    drain(runner.run_tasks(client, lambda job: 1 / 0, [1], name="z"))
    import dask
    import dask.array as da

    assert dask.config.get("scheduler", None) != "dask.distributed"
    assert int(da.ones(4).sum().compute()) == 4


def test_workers_map_a_large_mrc_again_instead_of_copying_it(tmp_path, monkeypatch):
    """A large MRC (or uncompressed TIFF) is memory-mapped here; its location is the file, the
    byte offset, type and shape, which a worker maps again: a cluster run reads it in place (no
    copy into a staged store) and writes the pixels of the run in this process. A view that is
    not a whole run of the file's bytes has no such location (it is copied, as before)."""
    import mrcfile
    import zarr

    from napari_emdiffuse.api import restore_to_zarr_iter
    from napari_emdiffuse.engine.events import drain
    from napari_emdiffuse.engine.io import mrc
    from napari_emdiffuse.engine.io.images import read_image
    from napari_emdiffuse.engine.io.sources import open_source, source_of

    vol = (np.random.default_rng(8).random((3, 40, 36)) * 200).astype(np.int16)
    with mrcfile.new(tmp_path / "v.mrc") as m:
        m.set_data(vol)
    monkeypatch.setattr(mrc, "MRC_MMAP_MIN_BYTES", 0)
    data = read_image(tmp_path / "v.mrc").data
    assert isinstance(data, np.memmap)
    where = source_of(data)
    assert where == (str((tmp_path / "v.mrc").resolve()), "mmap:1024:<i2:3x40x36", (), ())
    np.testing.assert_array_equal(open_source(*where), vol)
    assert source_of(data[1:]) is None and source_of(data[:, ::2]) is None  # offset or strided: no location
    path = str(make_tiny("denoise").save(tmp_path / "tiny"))
    kw = dict(block=32, steps=1, tile=32, overlap=8, device="cpu", z_filter="off")
    drain(restore_to_zarr_iter(data, tmp_path / "here.zarr", "denoise", path, **kw))
    stages = [ev.stage for ev in restore_to_zarr_iter(data, tmp_path / "there.zarr", "denoise", path, workers=1, **kw)
              if hasattr(ev, "stage")]
    assert "block" in stages and "staging" not in stages  # read in place, not copied
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "there.zarr"), mode="r")[:],
                                  zarr.open_array(str(tmp_path / "here.zarr"), mode="r")[:])


def test_a_runs_passes_share_the_cluster_it_keeps():
    """Inside kept_cluster, cluster_client for the same workers hands out that client and
    leaves it open (a run's blocks, then its file, on one local cluster); once the run has
    ended it starts its own."""
    with runner.kept_cluster(1, None) as kept:
        with runner.cluster_client(1, None) as same:
            assert same is kept
        assert kept.status == "running"  # the inner pass did not close it
    assert kept.status in ("closed", "closing")
    with runner.cluster_client(1, None) as fresh:
        assert fresh is not kept and fresh.status == "running"
