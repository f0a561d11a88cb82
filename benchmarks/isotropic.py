"""Isotropic reconstruction (vEMDiffuse) on real volume EM, side by side with interpolation.

Default: on the near-isotropic C. elegans volume (celegans_neariso_21x256x128), keep every
2nd / 3rd / 4th slice, reconstruct the dropped ones and score them (PSNR, SSIM, data range
255) against the truth, next to linear and cubic interpolation along z. Without the model
only the baselines are printed.

``--anisotropic``: run mode -a at factor 12 on a crop of the ISBI 2012 ssTEM volume
(4x4x50 nm) and save XZ reslices (input, nearest-upsampled, vs output) as PNG into docs/.
``--memory``: peak memory of a zarr-to-zarr run vs the number of slices.
``--doses 300,100,30``: also on noisy copies of the volume (simulated Poisson-Gaussian noise at
these doses, scored against the clean dropped slices): interpolation and the model on the
noisy slices, and on the slices denoised first with ``--denoiser`` (what a user gets from
``emdiffuse denoise`` followed by ``emdiffuse isotropic``).

    python benchmarks/isotropic.py [--model demo-isotropic] [--factors 2,3,4] [--steps 10]
    python benchmarks/isotropic.py --anisotropic [--crop 128] [--slices 6]
    python benchmarks/isotropic.py --memory
    python benchmarks/isotropic.py --factors 3 --y-range 192:256 --doses 300,100,30
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile

from _common import ROOT, Timer, need_shared, table
from napari_emdiffuse.engine.errors import EMDiffuseError
from napari_emdiffuse.engine.core.metrics import psnr, ssim
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.api import reconstruct_isotropic

CELEGANS = "em3d/celegans_neariso_21x256x128.tif"
ISBI = "em3d/isbi2012_train_volume_30x512x512.tif"


def drop_slices(vol: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep slices 0, f, 2f, ... (up to the last multiple of f); return kept, their z, and
    the z of the dropped slices between them."""
    last = (vol.shape[0] - 1) // factor * factor
    kept_z = np.arange(0, last + 1, factor)
    dropped = np.array([z for z in range(last + 1) if z % factor])
    return vol[kept_z], kept_z, dropped


def interpolate(kept: np.ndarray, kept_z: np.ndarray, z: np.ndarray, kind: str) -> np.ndarray:
    from scipy.interpolate import CubicSpline, interp1d

    data = kept.astype(np.float64)
    if kind == "cubic":
        out = CubicSpline(kept_z, data, axis=0)(z)
    else:
        out = interp1d(kept_z, data, axis=0, kind=kind)(z)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)  # scored as 8-bit, like the model's output


def score(name: str, factor: int, out: np.ndarray, truth: np.ndarray, seconds: float | None = None) -> dict:
    return {
        "factor": factor,
        "method": name,
        "slices scored": len(truth),
        "PSNR dB": f"{psnr(out, truth, data_range=255):.2f}",
        "SSIM": f"{ssim(out, truth, data_range=255):.4f}",
        "time s": "" if seconds is None else f"{seconds:.1f}",
    }


def try_model(name: str, device: str):
    if name == "random-tiny":
        return tiny_model()
    try:
        return load_model(name, task="isotropic-i", device=device)
    except EMDiffuseError as exc:
        print(f"note: model '{name}' is not available ({exc}); printing the baselines only\n")
        return None


def tiny_model():
    """A small random vEMDiffuse-i network: enough to measure memory and speed, not quality."""
    from napari_emdiffuse.engine.models import cards, factory

    m = factory.create_EMDiffuse(
        "vEMDiffuse-i", inner_channel=16, channel_mults=[1, 2], res_blocks=1, attn_res=[], num_head_channels=16
    )
    m.card.normalisation = cards.Normalisation()
    m.card.overlap, m.card.tile = 8, 64
    return m


def quality(args) -> None:
    vol = tifffile.imread(need_shared() / CELEGANS)
    if args.y_range:
        y0, y1 = (int(v) for v in args.y_range.split(":"))
        vol = vol[:, y0:y1]  # demo-isotropic never trained on rows 192-255
    model = try_model(args.model, args.device)
    rows = []
    for f in [int(v) for v in args.factors.split(",")]:
        kept, kept_z, dropped = drop_slices(vol, f)
        truth = vol[dropped]
        for kind in ("nearest", "linear", "cubic"):
            with Timer() as t:
                out = interpolate(kept, kept_z, dropped, kind)
            rows.append(score(f"{kind} interpolation", f, out, truth, t.seconds))
        if model is None:
            continue
        try:
            with Timer() as t:
                res = reconstruct_isotropic(
                    kept, f, model, preset=args.preset, steps=args.steps, samples=args.samples,
                    tile=args.tile, device=args.device, seed=args.seed,
                )  # fmt: skip
        except EMDiffuseError as exc:
            rows.append({"factor": f, "method": f"{model.card.name}: {exc}"})
            continue
        label = f"{model.card.name} ({res.info['sampler']}, {res.info['steps']} steps, {res.info['samples']} sample(s))"
        rows.append(score(label, f, res.volume[dropped], truth, t.seconds))
    if args.doses:
        rows += noisy_rows(args, vol, model)
    rows_note = f" rows {args.y_range}" if args.y_range else ""
    print(f"{CELEGANS}{rows_note}: {vol.shape} {vol.dtype}; keep every f-th slice, score the dropped ones\n")
    print(table(rows, ["factor", "method", "slices scored", "PSNR dB", "SSIM", "time s"]))


def noisy_rows(args, vol: np.ndarray, model) -> list[dict]:
    """Noisy volumes: every slice gets simulated noise; the dropped slices are scored
    against the clean ones, for interpolation and the model on the noisy kept slices, and
    on the kept slices denoised first."""
    from napari_emdiffuse.api import restore
    from napari_emdiffuse.engine.training.data.noise import simulate_noise

    denoiser = load_model(args.denoiser, task="denoise", device=args.device)
    rows = []
    for dose in (float(d) for d in args.doses.split(",") if d):
        noisy = np.stack(
            [simulate_noise(s, dose, rng=np.random.default_rng(z), lo=0, hi=255) for z, s in enumerate(vol)]
        ).astype(np.uint8)
        for f in [int(v) for v in args.factors.split(",")]:
            kept, kept_z, dropped = drop_slices(noisy, f)
            truth = vol[dropped]
            with Timer() as t:
                clean_kept = np.stack([restore(s, "denoise", denoiser, preset="fast").mean for s in kept])
            for label, inputs, extra in (("noisy", kept, 0.0), (f"{denoiser.card.name} first", clean_kept, t.seconds)):
                rows.append(score(f"dose {dose:g}, {label}: linear", f, interpolate(inputs, kept_z, dropped, "linear"),
                                  truth))
                if model is not None:
                    with Timer() as tm:
                        res = reconstruct_isotropic(inputs, f, model, preset=args.preset, device=args.device)
                    rows.append(score(f"dose {dose:g}, {label}: {model.card.name}", f, res.volume[dropped], truth,
                                      tm.seconds + extra))
    return rows


def xz(volume: np.ndarray, y: int) -> np.ndarray:
    return np.asarray(volume[:, y, :])


def anisotropic(args) -> None:
    from PIL import Image

    factor = 12  # 50 nm sections, 4 nm pixels
    vol = tifffile.imread(need_shared() / ISBI)[: args.slices, : args.crop, : args.crop]
    model = try_model(args.model, args.device)
    if model is not None and args.finetune:
        # vEMDiffuse-a: learn factor-12 interpolation from this volume's own lateral planes first
        from napari_emdiffuse.api import finetune

        full = tifffile.imread(need_shared() / ISBI)
        with Timer() as t:
            path = finetune(
                "isotropic-a", full, base=args.model, out=Path(tempfile.mkdtemp()) / "isbi-a", factor=factor,
                iterations=args.finetune, patch=24, batch=8, lr=2e-4, device=args.device,
            )
        model = load_model(path, task="isotropic-a", device=args.device)
        print(f"fine-tuned {args.model} on the lateral planes of the whole ISBI volume: {args.finetune} iterations, {t.seconds:.0f} s")
    y = vol.shape[1] // 2
    n_out = (vol.shape[0] - 1) * factor + 1
    nearest = xz(vol, y)[np.rint(np.arange(n_out) / factor).astype(int)]
    docs = Path(args.docs)
    docs.mkdir(exist_ok=True)
    Image.fromarray(nearest).save(docs / "isotropic_xz_input.png")
    print(f"{ISBI}: crop {vol.shape}, factor {factor}; wrote {docs / 'isotropic_xz_input.png'}")
    if model is None:
        return
    with Timer() as t:
        res = reconstruct_isotropic(
            vol, factor, model, mode="a", preset=args.preset, steps=args.steps, samples=args.samples,
            tile=args.tile, device=args.device, seed=args.seed, spacing=(50, 4, 4),
        )  # fmt: skip
    out = xz(res.volume, y).astype(np.uint8)
    Image.fromarray(out).save(docs / "isotropic_xz_output.png")
    gap = np.full((n_out, 8), 255, np.uint8)
    Image.fromarray(np.concatenate([nearest, gap, out], axis=1)).save(docs / "isotropic_xz.png")
    print(f"output {res.volume.shape} in {t.seconds:.1f} s; wrote isotropic_xz_output.png and isotropic_xz.png")


class PeakRSS:
    """Highest resident set size seen while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def memory(args) -> None:
    import zarr

    from napari_emdiffuse.engine.inference.volume import NORM_SAMPLE_VALUES

    base = tifffile.imread(need_shared() / CELEGANS)
    model = try_model(args.model, args.device) or tiny_model()
    print(
        f"model: {model.card.name}; zarr in -> zarr out of {base.shape[1]}x{base.shape[2]} slices, factor 2, "
        f"{args.steps or 1} step(s). The normalisation reads at most {NORM_SAMPLE_VALUES:,} values, so "
        f"numpy memory grows with the volume only until that cap.\n"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (3, 8, 32, 64):  # the first run is a warm-up (imports, allocator pools)
            vol = np.concatenate([base] * (n // base.shape[0] + 1))[:n]
            src = zarr.open_array(f"{tmp}/in{n}.zarr", mode="w", shape=vol.shape, chunks=(1, *vol.shape[1:]), dtype=vol.dtype)
            src[...] = vol
            del vol
            tracemalloc.start()
            t0 = time.perf_counter()
            with PeakRSS() as rss:
                reconstruct_isotropic(
                    src, 2, model, out=f"{tmp}/out{n}.zarr", steps=args.steps or 1, device=args.device,
                    tile=args.tile,
                )  # fmt: skip
            seconds = time.perf_counter() - t0
            numpy_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if n == 3:
                continue
            rows.append(
                {
                    "slices in": n,
                    "output MB": f"{(2 * n - 1) * src.shape[1] * src.shape[2] / 1e6:.1f}",
                    "peak numpy MB": f"{numpy_peak / 1e6:.2f}",
                    "peak RSS growth MB": f"{(rss.peak - rss.start) / 1e6:.1f}",
                    "time s": f"{seconds:.1f}",
                }
            )
    print(table(rows, ["slices in", "output MB", "peak numpy MB", "peak RSS growth MB", "time s"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-isotropic", help="'random-tiny': a small random network (tests the script)")
    ap.add_argument("--factors", default="2,3,4", help="comma-separated factors (keep every f-th slice)")
    ap.add_argument("--y-range", default=None, help="score only rows a:b of every slice (e.g. 192:256, held out)")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--anisotropic", action="store_true", help="ISBI 2012 at factor 12, mode a; XZ PNGs into docs/")
    ap.add_argument("--crop", type=int, default=128, help="lateral crop (px) for --anisotropic")
    ap.add_argument("--slices", type=int, default=6, help="slices of the ISBI volume for --anisotropic")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where --anisotropic writes its PNGs")
    ap.add_argument("--finetune", type=int, default=0, help="with --anisotropic: fine-tune N iterations in mode a first")
    ap.add_argument("--doses", default="", help="also score noisy copies at these doses (comma-separated)")
    ap.add_argument("--denoiser", default="demo-denoise", help="with --doses: the model that denoises first")
    ap.add_argument("--memory", action="store_true", help="peak memory vs volume size (zarr in/out)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.anisotropic:
        anisotropic(args)
    elif args.memory:
        memory(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
