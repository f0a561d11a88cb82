"""Train the bundled recipes on a lent GPU in one call; score them beside the bundled models.

The device tool lends a GPU for about 15 minutes a session (one command of at most 10), with
no network and no ``../shared`` there. So, here first (once a session; ``.gpu/`` is ignored)::

    bash benchmarks/gpu_prepare.sh        # the training data and the missing wheels -> .gpu/

then one device call, ``carry=[".gpu"]``, ``timeout_s=600``::

    bash benchmarks/gpu_train.sh          # runs this script with --data .gpu/data --out $OUT

Each recipe (``configs/demo-*.yaml``: the bundled models' own, network unchanged so that the
result can replace the bundled model) trains from scratch for its share of ``--minutes``: a
short probe measures the seconds per iteration with the GPU batch, the iteration count is set
to fill the share (the cosine schedule then ends where the run does), and ``max_minutes`` stops
it should the probe have been optimistic. Every model is scored beside the bundled one on the
quality rows (``benchmarks/quality.py``'s data; PSNR dB, SSIM, uncertainty), the table goes to
``$OUT/gpu_quality.txt`` and each model directory to ``$OUT/NAME.tar.partNN`` (15 MiB parts:
the tool brings back 8 files of 16 MiB at most). Back here::

    cat FILES_AT/demo-denoise-gpu.tar.part* | tar -x -C /tmp/gpu   # then compare and ship

``--continue`` trains on from the bundled models instead (each task's latest recipe, with its
base pointed at the bundled weights: ``demo-denoise-stage7``, ``demo-sr2-blur``,
``demo-isotropic-stage2``), so the GPU minutes add to the CPU-hours already spent rather than
start again; ``--widen 1.5`` (or 2) first widens each network by that factor, keeping its
function (``engine/core/networks/widen.py``; the 16-wide SR and isotropic bases take no width
and train on as they are).

On the CPU the same script is a smoke test: ``--device cpu --minutes 0.3,0.2,0.2 --probe 3``.
Run it in a virtual environment that holds only the device's packages and ``.gpu/whl``'s
(``PYTHONPATH=src``), so that a module the device lacks shows here, not in the device's minutes
(2026-12-07: safetensors and scikit-image were missing; ``--continue`` then ran through, 7 min).
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # task key: (recipe, bundled model)
    "denoise": ("demo-denoise.yaml", "demo-denoise"),
    "sr": ("demo-sr2.yaml", "demo-sr2"),
    "iso": ("demo-isotropic.yaml", "demo-isotropic"),
}
#: --continue: each task's latest recipe, whose base is the bundled model
CONTINUE = {
    "denoise": "demo-denoise-stage7.yaml",
    "sr": "demo-sr2-blur.yaml",
    "iso": "demo-isotropic-stage2.yaml",
}
PART = 15 * 2**20


def recipe(file: str, data: Path, **overrides):
    """The bundled recipe ``configs/file`` with its shared-data paths pointed at ``data``."""
    from napari_emdiffuse.engine.training.config import TrainConfig

    text = (ROOT / "configs" / file).read_text().replace("../../shared/data", str(data.resolve()))
    # a continuation's base: the bundled model in this checkout (the temporary copy moves the recipe)
    text = text.replace("../resources/models/", f"{(ROOT / 'resources' / 'models').resolve()}/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file
        path.write_text(text)
        return TrainConfig.from_yaml(path, **overrides)


def seconds_per_iteration(name: str, data: Path, probe: int, **common) -> float:
    """Time ``probe`` iterations after a warm-up of the same length (cuDNN picks its kernels)."""
    from napari_emdiffuse.api import train_iter

    with tempfile.TemporaryDirectory() as tmp:
        cfg = recipe(name, data, out=Path(tmp) / "probe", checkpoint_dir=Path(tmp) / "ckpt",
                     iterations=2 * probe, val_every=10**6, checkpoint_every=10**6, warmup=0, **common)
        marks = {}
        for ev in train_iter(cfg):
            if getattr(ev, "stage", None) == "training" and ev.loss is not None:
                marks[ev.done] = time.perf_counter()
    return (marks[2 * probe] - marks[probe]) / probe


def pack(model_dir: Path, out: Path) -> list[Path]:
    """``model_dir`` as a tar in parts of at most 15 MiB under ``out``."""
    whole = out / f"{model_dir.name}.tar"
    with tarfile.open(whole, "w") as tar:
        tar.add(model_dir, arcname=model_dir.name)
    parts = []
    with open(whole, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(PART), b"")):
            parts.append(out / f"{whole.name}.part{i:02d}")
            parts[-1].write_bytes(chunk)
    whole.unlink()
    return parts


def score(key: str, new: Path, bundled: str, device: str) -> str:
    """The quality rows of one task: baseline, the bundled model, the new model."""
    import numpy as np
    import tifffile

    import quality as q
    from _common import best_gaussian, need_shared, table
    from napari_emdiffuse.engine.models.registry import load_model

    task = {"denoise": "denoise", "sr": "super-resolve", "iso": "isotropic-i"}[key]
    models = [load_model(bundled, task=task, device=device), load_model(new, task=task, device=device, cache=False)]
    rows: list[dict] = []
    if key == "denoise":
        for data, n, c, _ in q.denoise_cases([30.0, 100.0, 300.0]):
            rows.append(q.row(data, "Gaussian (oracle)", best_gaussian(n, c)[2], c))
            for m in models:
                rows += [{**r, "method": f"{m.card.name} ({r['method']})"} for r in q.model_rows(data, n, c, task, m, device)]
    elif key == "sr":
        import torch
        import torch.nn.functional as F

        from napari_emdiffuse.engine.training.data.pairs import downsample_area

        for name in ("microns_1", "openorganelle_mouse_liver_1"):
            hr = tifffile.imread(need_shared() / "em2d" / "clean" / f"{name}.tif")
            lr = np.clip(np.rint(downsample_area(hr.astype(np.float64), 2)), 0, 255).astype(np.uint8)
            up = F.interpolate(torch.from_numpy(lr.astype(np.float32))[None, None], scale_factor=2, mode="bicubic",
                               align_corners=False)[0, 0].numpy()
            rows.append(q.row(name, "bicubic", np.clip(np.rint(up), 0, 255).astype(np.uint8), hr))
            for m in models:
                rows += [{**r, "method": f"{m.card.name} ({r['method']})"} for r in q.model_rows(name, lr, hr, task, m, device)]
    else:
        return "\n".join(q.iso_table(str(m), device, {}) for m in (bundled, new))
    return f"{key}: bundled {bundled} vs {new.name} (trained here)\n" + table(rows, q.COLUMNS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_out")))
    ap.add_argument("--tasks", default="denoise,sr,iso")
    ap.add_argument("--minutes", default="4,1.5,1", help="training minutes per task, in --tasks order")
    ap.add_argument("--batch", type=int, default=64, help="the recipes' 16 fit a CPU; a GPU takes more")
    ap.add_argument("--lr-scale", type=float, default=1.0, help="lr factor for the larger batch")
    ap.add_argument("--probe", type=int, default=20, help="iterations timed (after as many warm-up ones)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--continue", dest="resume_bundled", action="store_true",
                    help="train on from the bundled models (each task's latest recipe), not from scratch")
    ap.add_argument("--widen", type=float, default=0, choices=[0, 1.5, 2],
                    help="with --continue: widen each network by this factor")
    args = ap.parse_args()

    import torch

    os.environ["EMDIFFUSE_DATA"] = str(args.data.resolve())  # for _common.need_shared
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from napari_emdiffuse.api import train
    from napari_emdiffuse.engine.errors import EMDiffuseError

    args.out.mkdir(parents=True, exist_ok=True)
    keys = [k.strip() for k in args.tasks.split(",") if k.strip()]
    minutes = [float(m) for m in args.minutes.split(",")]
    if len(minutes) != len(keys) or any(k not in RECIPES for k in keys):
        raise SystemExit(f"--tasks from {', '.join(RECIPES)} with one --minutes value each")
    if args.widen and not args.resume_bundled:
        raise SystemExit("--widen widens the bundled networks: give --continue too")
    report = []
    for key, budget in zip(keys, minutes):
        name, bundled = RECIPES[key]
        if args.resume_bundled:
            name = CONTINUE[key]
        base = recipe(name, args.data)
        common = dict(device=args.device, batch=args.batch, lr=base.lr * args.lr_scale, resume=False)
        if args.widen:
            from napari_emdiffuse.engine.models.files import read_card

            width = int(read_card(base.base).network.inner_channel * args.widen)
            common["network"] = {**base.network, "inner_channel": width}
        try:
            spi = seconds_per_iteration(name, args.data, args.probe, **common)
        except EMDiffuseError as exc:  # a base whose layout takes no width (the 16-wide ones)
            if "network" not in common:
                raise
            print(f"{key}: not widened: {exc}", flush=True)
            del common["network"]
            spi = seconds_per_iteration(name, args.data, args.probe, **common)
        # validation and saving take a few seconds: fill 85 % of the share with iterations
        iterations = max(10, int(0.85 * 60 * budget / spi))
        out = Path(tempfile.mkdtemp()) / f"{bundled}-gpu"
        cfg = recipe(name, args.data, out=out, name=out.name, checkpoint_dir=out.parent / "ckpt", iterations=iterations,
                     warmup=min(base.warmup, iterations // 10), val_every=max(1, iterations // 4),
                     checkpoint_every=iterations, max_minutes=budget, keep_checkpoint=False, **common)
        started = time.perf_counter()
        path = train(cfg)
        line = (f"{key}: {name}{f', widened x{args.widen:g}' if 'network' in common else ''}, {iterations} iterations planned at {spi * 1000:.0f} ms each (batch {args.batch}, "
                f"lr {cfg.lr:g}), trained in {(time.perf_counter() - started) / 60:.1f} min")
        print(line, flush=True)
        report.append(line)
        report.append(score(key, path, bundled, args.device))
        print(report[-1], flush=True)
        parts = pack(path, args.out)
        print(f"wrote {', '.join(p.name for p in parts)}", flush=True)
        (args.out / "gpu_quality.txt").write_text("\n\n".join(report) + "\n")


if __name__ == "__main__":
    main()
