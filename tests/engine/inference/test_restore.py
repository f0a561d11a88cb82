"""2D restoration: shapes, dtypes, determinism, seams, streaming, bad input."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_emdiffuse.engine.errors import EMDiffuseError, InputError
from napari_emdiffuse.engine.events import Progress
from napari_emdiffuse.api import restore, restore_iter, restore_to_zarr
from napari_emdiffuse.engine.inference.restore import Restoration

from napari_emdiffuse.engine.io.images import read_image
from tests.conftest import make_tiny, write_tczyx_ome

FAST = dict(steps=2, tile=32, overlap=8, device="cpu")


@pytest.fixture(scope="module")
def model():
    return make_tiny("denoise")


@pytest.fixture(scope="module")
def sr_model():
    return make_tiny("super-resolve")


def _img(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    if np.dtype(dtype).kind in "ui":
        return (x * min(np.iinfo(dtype).max, 4000)).astype(dtype)
    return (x * 3 - 1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (40, 70)])
def test_output_shape_and_dtype_follow_input(model, dtype, shape):
    img = _img(shape, dtype)
    before = img.copy()
    r = restore(img, "denoise", model, **FAST)
    assert isinstance(r, Restoration)
    assert r.mean.shape == shape and r.mean.dtype == dtype
    assert np.isfinite(r.mean.astype(np.float64)).all()
    assert np.array_equal(img, before)  # input untouched


def test_real_em_image_restores_within_input_range(model, em_image):
    r = restore(em_image[:96, :80], "denoise", model, **FAST)
    assert r.mean.shape == (96, 80) and r.mean.dtype == np.uint8
    assert r.normalisation["mode"] == "percentile"


def test_stack_is_restored_slice_by_slice(model):
    stack = _img((3, 24, 40))
    r = restore(stack, "denoise", model, **FAST)
    assert r.mean.shape == (3, 24, 40)
    single = restore(stack[1], "denoise", model, **FAST).mean
    # slice 1 of the stack uses the stack's normalisation and noise stream z=1, so it differs
    # from a lone restore, but both are valid images of the same size
    assert single.shape == r.mean[1].shape


def test_samples_give_uncertainty_in_input_units(model):
    img = _img((40, 40))
    r = restore(img, "denoise", model, samples=3, **FAST)
    assert r.uncertainty is not None and r.uncertainty.shape == (40, 40) and r.uncertainty.dtype == np.float32
    assert (r.uncertainty >= 0).all() and r.uncertainty.max() > 0
    assert restore(img, "denoise", model, samples=1, **FAST).uncertainty is None


def test_mirror_ensemble_samples_are_flipped_back_into_place(model):
    # Odd, non-square size: the padding ends up on the other side of a mirrored canvas.
    y, x = np.mgrid[0:37, 0:50]
    img = (40 + 2 * x + 2 * y).astype(np.uint8)  # a ramp: a sample left mirrored would be far off
    # Started from the condition at the cleanest level, every sample stays close to the input.
    r = restore(img, "denoise", model, samples=4, flips=True, steps=1, start_log_snr=20.0, tile=32, overlap=8, device="cpu")
    assert r.mean.shape == img.shape
    assert np.abs(r.mean.astype(float) - img).mean() < 3.0
    assert r.uncertainty is not None and float(r.uncertainty.mean()) < 3.0
    plain = restore(img, "denoise", model, samples=4, flips=False, **FAST).mean
    mirrored = restore(img, "denoise", model, samples=4, flips=True, **FAST).mean
    assert not np.array_equal(plain, mirrored)
    # one sample: nothing to mirror
    one = dict(samples=1, **FAST)
    assert np.array_equal(restore(img, "denoise", model, flips=True, **one).mean, restore(img, "denoise", model, **one).mean)


def test_balanced_preset_mirrors_its_samples(model):
    from napari_emdiffuse.engine.inference.canvas import resolve_options

    assert resolve_options(model, torch.device("cpu"), preset="balanced").flips
    assert not resolve_options(model, torch.device("cpu"), preset="fast").flips
    assert not resolve_options(model, torch.device("cpu"), preset="balanced", flips=False).flips


def test_result_independent_of_batch_size_and_tile_order(model):
    img = _img((70, 90))
    a = restore(img, "denoise", model, steps=2, tile=32, overlap=8, batch=1, device="cpu").mean
    b = restore(img, "denoise", model, steps=2, tile=32, overlap=8, batch=5, device="cpu").mean
    assert np.array_equal(a, b)


def test_seed_changes_sample_and_is_reproducible(model):
    img = _img((40, 40))
    a = restore(img, "denoise", model, seed=1, **FAST).mean
    b = restore(img, "denoise", model, seed=1, **FAST).mean
    c = restore(img, "denoise", model, seed=2, **FAST).mean
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_super_resolution_doubles_size_and_halves_spacing(sr_model):
    img = _img((20, 30), np.uint16)
    r = restore(img, "super-resolve", sr_model, spacing=(8.0, 8.0), **FAST)
    assert r.mean.shape == (40, 60) and r.mean.dtype == np.uint16
    assert r.scale == 2 and r.spacing == (4.0, 4.0)


def test_progress_events_count_tiles_and_steps(model):
    events = list(restore_iter(_img((50, 50)), "denoise", model, **FAST))
    assert isinstance(events[-1], Restoration)
    prog = [e for e in events if isinstance(e, Progress) and e.stage == "sampling"]
    assert prog[-1].done == prog[-1].total and prog[0].total == prog[-1].total
    assert [e.done for e in prog] == sorted(e.done for e in prog)
    assert any(isinstance(e, Progress) and e.stage == "step" for e in events)


def test_a_region_comes_out_as_in_the_whole_image_run(model, sr_model):
    """region=: the whole image's normalisation, noise positions and tiles. A one-pass run
    gives the whole run's very pixels anywhere in the image (a multi-step one sees half a
    tile of context and stays close), while restoring the cut-out alone (its own
    normalisation and tiles) does not."""
    rng = np.random.default_rng(9)
    img = (rng.random((160, 176)) * 60).astype(np.uint8)
    img[:, 88:] += 190  # a bright right half: a dark crop normalises differently
    one = dict(FAST, steps=1, samples=2, dtype=np.float32)  # float: float rounding alone differs
    whole = restore(img, "denoise", model, **one)
    for box in ((50, 90, 44, 81), (0, 17, 130, 176), (101, 160, 0, 33)):
        y0, y1, x0, x1 = box
        part = restore(img, "denoise", model, region=box, **one)
        assert part.mean.shape == (y1 - y0, x1 - x0) and part.info["region"] == list(box)
        assert np.abs(part.mean - whole.mean[y0:y1, x0:x1]).max() < 0.05, box
        assert np.abs(part.uncertainty - whole.uncertainty[y0:y1, x0:x1]).max() < 0.05, box
    alone = restore(img[50:90, 44:81].copy(), "denoise", model, **one).mean
    assert np.abs(alone - whole.mean[50:90, 44:81]).mean() > 5  # the control: its own normalisation
    multi = dict(FAST, samples=2)
    whole = restore(img, "denoise", model, **multi)
    part = restore(img, "denoise", model, region=(50, 90, 44, 81), **multi)
    assert np.abs(part.mean.astype(int) - whole.mean[50:90, 44:81]).mean() < 1.0
    # a stack: every slice's region; super-resolution: the region times the scale
    assert restore(np.stack([img, img]), "denoise", model, region=(0, 8, 0, 9), **multi).mean.shape == (2, 8, 9)
    assert restore(img, "super-resolve", sr_model, region=(0, 8, 0, 9), **FAST).mean.shape == (16, 18)
    for bad, match in (((0, 170, 0, 5), "not inside the image's 160 rows"), ((5, 5, 0, 5), "not inside"),
                       ((0, 5, 0), "a region is"), ((0.5, 5, 0, 5), "a region is"),
                       ((slice(0, 8, 2), slice(0, 8)), "no step")):
        with pytest.raises(InputError, match=match):
            restore(img, "denoise", model, region=bad, **FAST)


def test_closing_the_generator_cancels(model):
    gen = restore_iter(_img((64, 64)), "denoise", model, steps=50, tile=32, overlap=8, device="cpu")
    for i, ev in enumerate(gen):
        if i == 3:
            break
    gen.close()  # no exception, nothing left running
    with pytest.raises(StopIteration):
        next(gen)


def test_dask_and_zarr_inputs(model, tmp_path):
    img = _img((48, 48))
    ref = restore(img, "denoise", model, **FAST).mean
    assert np.array_equal(restore(da.from_array(img, chunks=16), "denoise", model, **FAST).mean, ref)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=img.shape, dtype=img.dtype, chunks=(16, 16))
    z[:] = img
    assert np.array_equal(restore(z, "denoise", model, **FAST).mean, ref)


def test_restore_to_zarr_streams_blocks_and_marks_completion(model, tmp_path):
    from napari_emdiffuse.engine.io.zarr import is_complete

    img = _img((2, 80, 72))
    out = tmp_path / "out.zarr"
    restore_to_zarr(da.from_array(img, chunks=(1, 40, 40)), out, "denoise", model, block=40, **FAST)
    assert is_complete(out)
    res = zarr.open_array(str(out), mode="r")
    assert res.shape == img.shape and res.dtype == img.dtype
    assert not list(tmp_path.glob("*.partial*"))


def test_restore_to_zarr_cancel_leaves_nothing(model, tmp_path):
    out = tmp_path / "out.zarr"
    from napari_emdiffuse.api import restore_to_zarr_iter

    gen = restore_to_zarr_iter(_img((80, 80)), out, "denoise", model, block=40, **FAST)
    for i, _ in enumerate(gen):
        if i == 2:
            break
    gen.close()
    assert not out.exists() and not list(tmp_path.glob("*partial*"))


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.array([[1.0, np.inf], [0, 1]]), "Inf pixels"),
        (np.zeros((16, 16, 3), np.uint8), "RGB"),
        (np.zeros((2, 2, 4, 4, 4), np.uint8), "dimensions"),
        (np.zeros((4, 4), np.complex64), "complex"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_bad_images_get_one_line_errors(model, image, match):
    with pytest.raises(InputError, match=match) as info:
        restore(image, "denoise", model, **FAST)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "opts,match",
    [({"tile": 0}, "tile"), ({"tile": 32, "overlap": 32}, "overlap"), ({"tile": -5}, "tile"),
     ({"steps": 0}, "steps"), ({"preset": "slow"}, "preset"), ({"sampler": "euler"}, "sampler"),
     ({"device": "gpu9"}, "device")],
)
def test_bad_options_get_one_line_errors(model, opts, match):
    kw = {**FAST, **opts}
    with pytest.raises(EMDiffuseError, match=match):
        restore(_img((16, 16)), "denoise", model, **kw)


def test_model_for_another_task_is_refused(sr_model):
    with pytest.raises(EMDiffuseError, match="made for super-resolve"):
        restore(_img((16, 16)), "denoise", sr_model, **FAST)


def test_constant_image_stays_finite_and_constant(model):
    img = np.full((20, 20), 77, np.uint8)
    r = restore(img, "denoise", model, **FAST)
    assert r.mean.dtype == np.uint8 and np.isfinite(r.mean).all()


class _LocalNet(torch.nn.Module):
    """A 'UNet' with a 5x5 receptive field: its whole-image output is known exactly."""

    out_channel, slice_embedding, aleatoric = 1, False, False

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(2, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x, level):
        return self.b(torch.tanh(self.a(x))) * (1 + level.view(-1, 1, 1, 1))


def test_per_step_merging_makes_tilings_agree():
    """With a local network, different tilings give the same image: no seams, no bands."""
    from scipy.ndimage import gaussian_filter

    m = make_tiny("denoise")
    m.module.denoise_fn = _LocalNet().eval()
    yy, xx = np.mgrid[:80, :80]
    img = (np.sin(yy / 9.0) * np.cos(xx / 13.0) + 0.3 * _img((80, 80), np.float32, seed=3)).astype(np.float32)
    a = restore(img, "denoise", m, steps=3, tile=32, overlap=8, device="cpu").mean
    b = restore(img, "denoise", m, steps=3, tile=48, overlap=8, device="cpu").mean
    coarse = np.abs(gaussian_filter(a - b, 8)).max() / (gaussian_filter(img, 8).std() + 1e-9)
    # Seeds 0-2 give 0.006-0.026 (the local net still sees zero padding at tile edges);
    # the control below, two noise draws (what unmerged, per-tile sampling amounts to), 0.45.
    assert coarse < 0.05
    c = restore(img, "denoise", m, steps=3, tile=32, overlap=8, device="cpu", seed=1).mean
    assert np.abs(gaussian_filter(a - c, 8)).max() / (gaussian_filter(img, 8).std() + 1e-9) > 0.2
    # a random network saturates at +-1, so a few pixels on its decision edges may flip
    assert (np.abs(a - b) > 1e-3).mean() < 0.05

    # The control: restoring tiles independently and pasting them (naive tiling) must show
    # the seams that per-step merging avoids.
    def naive(t: int) -> np.ndarray:
        out = np.zeros_like(img)
        for y in range(0, 80, t):
            for x in range(0, 80, t):
                crop = img[y : y + t, x : x + t]
                out[y : y + t, x : x + t] = restore(crop, "denoise", m, steps=3, tile=32, overlap=8, device="cpu").mean
        return out

    na, nb = naive(32), naive(48)
    assert (np.abs(na - nb) > 1e-3).mean() > 3 * max((np.abs(a - b) > 1e-3).mean(), 0.01)


def test_distributed_blocks_equal_single_machine(tmp_path, tiny_model_dir):
    """The same block plan on 2 dask worker processes writes the same store, averaged along z
    (its slices are alike) by the workers, one task per column of chunks, before it is
    committed."""
    from scipy.ndimage import gaussian_filter

    from napari_emdiffuse.engine.io.zarr import is_complete
    from napari_emdiffuse.api import restore_to_zarr_iter

    rng = np.random.default_rng(0)
    img = np.clip(128 + 400 * gaussian_filter(rng.normal(size=(48, 40)), 3) + rng.normal(0, 10, (5, 48, 40)), 0, 255)
    img = img.astype(np.uint8)
    src = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=img.shape, dtype=img.dtype, chunks=(1, 48, 40))
    src[:] = img
    kw = dict(block=24, steps=2, tile=32, overlap=8, device="cpu")
    restore_to_zarr(src, tmp_path / "one.zarr", "denoise", str(tiny_model_dir), **kw)
    # The workers read the same pixels from an OME-Zarr store with a single T and C in front,
    # in place (through its location, not a copy).
    tczyx = read_image(write_tczyx_ome(tmp_path / "in.ome.zarr", img)).data
    events = list(restore_to_zarr_iter(tczyx, tmp_path / "two.zarr", "denoise", str(tiny_model_dir), workers=2, **kw))
    assert events[-1] == tmp_path / "two.zarr" and is_complete(tmp_path / "two.zarr")
    assert not any("copying the input" in (e.message or "") for e in events[:-1])
    submitted = [(e.stage, e.total) for e in events[:-1] if e.message == f"{e.total} tasks submitted"]
    assert submitted == [("block", 20), ("z filter: choosing its width", 4), ("z filter", 4)]  # 5 x 2 x 2 blocks
    one = zarr.open_array(str(tmp_path / "one.zarr"), mode="r")[:]
    two = zarr.open_array(str(tmp_path / "two.zarr"), mode="r")[:]
    # Worker processes run torch with their own thread count, so float reductions may be ordered
    # differently: allow a 1-grey-level rounding difference, nothing more.
    diff = np.abs(one.astype(np.int16) - two.astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert not list(tmp_path.glob(".*work-*")) and not list(tmp_path.glob("*partial*"))
    widths = [zarr.open_array(str(tmp_path / n), mode="r").attrs.get("z_filter") for n in ("one.zarr", "two.zarr")]
    assert widths[0] is not None and widths[0] == widths[1]


def test_precision_is_fp32_unless_asked_and_refused_where_unsupported(tiny_model, monkeypatch):
    from napari_emdiffuse.engine.models import device

    img = _img((32, 32))
    assert restore(img, "denoise", tiny_model, steps=1, device="cpu").info["precision"] == "fp32"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    for p in ("bf16", "fp16"):
        with pytest.raises(EMDiffuseError, match=p):
            restore(img, "denoise", tiny_model, steps=1, device="cpu", precision=p)
    with pytest.raises(EMDiffuseError, match="would emulate it"):
        restore(img, "denoise", tiny_model, steps=1, device="cpu", precision="bf16")
    # A CPU with native bf16 runs the bundled predictor in it: within 2 grey levels of fp32, not equal to it.
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    x = _img((96, 96), seed=3)
    full = restore(x, "denoise", "demo-denoise", device="cpu").mean
    half = restore(x, "denoise", "demo-denoise", device="cpu", precision="bf16")
    diff = np.abs(half.mean.astype(int) - full.astype(int))
    assert half.info["precision"] == "bf16" and 0 < diff.max() <= 2
    with pytest.raises(EMDiffuseError, match="unknown precision"):
        restore(img, "denoise", tiny_model, steps=1, device="cpu", precision="fp8")


def test_in_memory_and_zarr_restorations_share_the_block_plan(model, tmp_path):
    """restore() goes through the same blocks as restore_to_zarr(): the same pixels."""
    img = _img((90, 70), seed=4)
    mem = restore(img, "denoise", model, block=40, **FAST).mean
    restore_to_zarr(img, tmp_path / "o.zarr", "denoise", model, block=40, **FAST)
    assert np.array_equal(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:], mem)


def test_a_one_pass_run_gives_the_same_pixels_whatever_the_blocks(model, sr_model):
    """Blocks run the whole image's tiles, and mirrored samples flip their tiles, not the
    block: any block size gives the same pixels (the size the GPU's memory allows must not
    change a result), but for float rounding: batches of other tiles round differently, by
    0.007 grey levels at most (a batch of 1 against 32, measured). Controls: a block restored
    on its own differs, and the mirror ensemble changes the pixels, so it did run."""
    img = _img((150, 170), seed=5)
    for m, kw in ((model, dict(FAST, steps=1, samples=4, flips=True)), (sr_model, dict(FAST, steps=1))):
        task = "super-resolve" if m is sr_model else "denoise"
        ref = restore(img, task, m, block=2048, dtype=np.float32, **kw)
        for block in (32, 48, 100):
            r = restore(img, task, m, block=block, dtype=np.float32, **kw)
            assert np.abs(r.mean - ref.mean).max() < 0.05, (task, block)
            if ref.uncertainty is not None:
                assert np.abs(r.uncertainty - ref.uncertainty).max() < 0.05, (task, block)
        s = 2 if task == "super-resolve" else 1
        alone = restore(img[48:96, 48:96].copy(), task, m, dtype=np.float32, **kw).mean
        assert np.abs(alone - ref.mean[48 * s : 96 * s, 48 * s : 96 * s]).mean() > 1
    plain = restore(img, "denoise", model, block=2048, **dict(FAST, steps=1, samples=4, flips=False)).mean
    mirrored = restore(img, "denoise", model, block=2048, **dict(FAST, steps=1, samples=4, flips=True)).mean
    assert np.abs(plain.astype(int) - mirrored).mean() > 0.5


def test_mirrored_tiles_are_the_network_on_the_mirrored_image():
    """A mirrored view is the network run on the mirrored image and mirrored back (closed
    form: a predictor on a one-tile canvas). Control: the network itself is not
    mirror-symmetric, so the view differs from the plain pass."""
    from napari_emdiffuse.engine.inference.canvas import Item, resolve_options, sample_canvas
    from tests.engine.models.test_predictors import predictor

    m = predictor(perturb=0.05)
    opts = resolve_options(m, torch.device("cpu"), tile=32, overlap=8)
    cond = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, _ = m.unet(cond)
    plain = out[0, 0]

    def view(flip):
        gen = sample_canvas(m, cond, [Item(cond=0, stream=(), flip=flip)], opts)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value[0][0]

    assert torch.allclose(view(()), plain, atol=1e-5)
    for flip in ((-1,), (-2,), (-2, -1)):
        with torch.no_grad():
            by_hand = torch.flip(m.unet(torch.flip(cond, flip))[0][0, 0], flip)
        assert torch.allclose(view(flip), by_hand, atol=1e-5), flip
        assert (view(flip) - plain).abs().mean() > 1e-3, flip


def test_out_of_memory_in_a_block_starts_again_with_smaller_blocks(model, monkeypatch):
    from napari_emdiffuse.engine.inference import restore as restore_mod

    img = _img((80, 80), seed=6)
    ref = restore(img, "denoise", model, block=40, **FAST).mean
    real = restore_mod.restore_plane
    sizes = []

    def tight(m, plane, *a, **k):
        size = max(k["keep"][0].stop - k["keep"][0].start, k["keep"][1].stop - k["keep"][1].start)
        sizes.append(size)
        if size > 40:  # a block of more than 40 px "does not fit the GPU"
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return (yield from real(m, plane, *a, **k))

    monkeypatch.setattr(restore_mod, "restore_plane", tight)
    events = list(restore_iter(img, "denoise", model, block=80, **FAST))
    assert any("out of GPU memory" in e.message for e in events if isinstance(e, Progress))
    assert np.array_equal(events[-1].mean, ref)  # the retry used 40-px blocks
    with pytest.raises(EMDiffuseError, match="out of GPU memory even with"):
        restore(img, "denoise", model, block=80, **{**FAST, "tile": 64, "overlap": 8})


def test_cpu_batches_hold_about_32k_pixels_and_never_change_the_pixels(tiny_model):
    """The CPU's default batch fills 32768 pixels (8 tiles of 64 px, at least 2 tiles); the
    result is the same at any batch."""
    from napari_emdiffuse.engine.inference.canvas import resolve_options

    cpu = torch.device("cpu")
    assert [resolve_options(tiny_model, cpu, tile=t).batch for t in (32, 64, 128, 256)] == [32, 8, 2, 2]
    assert resolve_options(tiny_model, cpu, tile=64, batch=3).batch == 3  # asked for: kept
    img = _img((70, 90), seed=5)
    auto = restore(img, "denoise", tiny_model, tile=32, overlap=8, steps=2, device="cpu")
    two = restore(img, "denoise", tiny_model, tile=32, overlap=8, steps=2, device="cpu", batch=2)
    assert auto.info["batch"] == 32 and two.info["batch"] == 2 and np.array_equal(auto.mean, two.mean)


def test_a_region_into_a_zarr_store_is_the_in_memory_region(model, tmp_path):
    """restore_to_zarr(region=...): a part of any size streamed into a store, the same pixels
    as the region in memory (and as the whole run there, for a one-pass model); a stack's z
    filter reads the region's own input. The store says which region it holds."""
    import zarr

    stack = _img((3, 90, 110), seed=8)
    one = dict(FAST, steps=1, samples=1)
    box = (20, 75, 30, 101)
    mem = restore(stack, "denoise", model, region=box, z_filter=0.8, **one)
    restore_to_zarr(stack, tmp_path / "r.zarr", "denoise", model, region=box, z_filter=0.8, block=32, **one)
    got = zarr.open_array(str(tmp_path / "r.zarr"), mode="r")
    assert got.shape == (3, 55, 71) and got.attrs["region"] == list(box)
    np.testing.assert_array_equal(got[:], mem.mean)
    whole = restore(stack, "denoise", model, z_filter="off", dtype=np.float32, **one).mean
    part = restore(stack, "denoise", model, region=box, z_filter="off", dtype=np.float32, **one).mean
    assert np.abs(part - whole[:, 20:75, 30:101]).max() < 0.05
