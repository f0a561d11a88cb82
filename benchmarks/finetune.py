"""Does fine-tuning pay off on data the bundled models never saw? One table, one run.

Denoising: openorganelle_mouse_liver_0 (held out of the bundled denoiser's training) with
simulated correlated Poisson-Gaussian noise (``--dose``, neighbour correlation ~0.5 as in
short-dwell SEM). The right half is scored against the clean image:

* the bundled model as it is;
* paired fine-tuning on the left half (noisy -> clean), and with a second pair of the kind
  beside it (liver_1 with the same simulated noise);
* self-supervised fine-tuning on the noisy image alone (no clean image);
* careamics Noise2Void trained on the same noisy image, when ``--peers`` names the JSON of
  ``benchmarks/peers.py`` (key ``finetune``);
* Gaussian and BM3D filters at their oracle-best strength.

Isotropic (vEMDiffuse-a): rows 192:256 of the near-isotropic C. elegans volume with every
other slice dropped (factor 2: the kept 11 slices are the fewest a (Z, X) training plane of
this network can use); the bundled factor-3 model gets new output heads and is fine-tuned on
the kept volume's own planes only, and the dropped slices are scored against linear
interpolation.

The real SEM pair's validation rows with its noise scaled (``--pair-gains``): paired
fine-tuning on the left half and self-supervised on the noisy right half, the right half scored.
There the bundled model already fits the noise. The opposite case (``--inverted``): liver_0 with
its contrast inverted before white noise is simulated (raw backscatter SEM, membranes bright),
which the bundled denoiser, trained on dark membranes, restores below a Gaussian filter.

Noisy stacks (``--stack-doses``): the C. elegans volume and a crop of ISBI 2012 with correlated
noise simulated slice by slice; self-supervised fine-tuning on the whole stack, which is scored:
the default (a blind spot) and the neighbouring slices forced, against the bundled model, each
restored with the z filter off and on (``auto``: averaged along z where slices are alike).

    python benchmarks/finetune.py [--iterations 200] [--dose 30] [--pair-gains 1.41 2] [--inverted 200]
                                  [--stack-doses 30 100]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from _common import CORRELATION, Timer, best_bm3d, best_gaussian, brain_pair, inverted_liver, need_shared, stack_case, table
from napari_emdiffuse.engine.core.metrics import psnr, ssim
from napari_emdiffuse.engine.errors import EMDiffuseError
from napari_emdiffuse.engine.events import drain
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.api import restore
from napari_emdiffuse.engine.training.data.noise import simulate_noise
from napari_emdiffuse.engine.training.finetune import finetune_iter
from napari_emdiffuse.api import reconstruct_isotropic



def liver_case(dose: float, name: str = "openorganelle_mouse_liver_0.tif", seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    clean = tifffile.imread(need_shared() / "em2d" / "clean" / name)
    rng = np.random.default_rng(seed)
    noisy = simulate_noise(clean, dose, rng=rng, lo=0, hi=255, correlation=CORRELATION).astype(np.uint8)
    return noisy, clean


def score(case: str, name: str, out: np.ndarray, truth: np.ndarray, seconds: float | None = None) -> dict:
    return {
        "case": case,
        "method": name,
        "PSNR dB": f"{psnr(out, truth, data_range=255):.2f}",
        "SSIM": f"{ssim(out, truth, data_range=255):.4f}",
        "time s": "" if seconds is None else f"{seconds:.0f}",
    }


def denoise_rows(args, tmp: Path, peers: dict, inverted: float | None = None) -> list[dict]:
    """Fine-tuning on liver_0 (correlated noise at ``args.dose``, or inverted contrast at dose
    ``inverted``): paired on the left half, self-supervised on the whole noisy image."""
    if inverted is None:
        noisy, clean = liver_case(args.dose)
        case = f"liver_0 dose {args.dose:g}, corr. noise"
    else:
        noisy, clean = inverted_liver(inverted)
        case = f"liver_0 inverted, dose {inverted:g}"
    half = noisy.shape[1] // 2
    test_n, test_c = noisy[:, half:], clean[:, half:]
    rows = [score(case, "noisy input", test_n, test_c)]
    rows.append(score(case, "Gaussian (oracle sigma)", best_gaussian(test_n, test_c)[2], test_c))
    rows.append(score(case, "BM3D (oracle sigma)", best_bm3d(test_n, test_c)[2], test_c))
    for name, entry in (peers.get("finetune", {}) if inverted is None else {}).items():  # N2V, StructN2V
        rows.append(score(case, f"careamics {name} ({entry['minutes']:.0f} min, whole image)",
                          np.load(entry["output"])[:, half:], test_c))
    base = load_model(args.base, task="denoise", device=args.device)
    rows.append(score(case, f"{args.base} (bundled), fast", restore(test_n, "denoise", base, device=args.device).mean,
                      test_c))
    runs = [
        ("paired fine-tune (left half)", dict(input=noisy[:, :half], target=clean[:, :half])),
        ("self-supervised fine-tune (noisy image only)", dict(input=noisy, target=None)),
    ]
    if inverted is None:  # a second pair of the kind: liver_1 with the same noise
        second_n, second_c = liver_case(args.dose, "openorganelle_mouse_liver_1.tif", seed=8)
        runs.insert(1, ("paired fine-tune (left half + a second pair, liver_1)",
                        dict(input=[noisy[:, :half], second_n], target=[clean[:, :half], second_c])))
    for name, data in runs:
        with Timer() as t:
            path = drain(finetune_iter("denoise", data["input"], data["target"], base=args.base,
                                       out=tmp / f"{name.split()[0]}{inverted or ''}", iterations=args.iterations,
                                       device=args.device))
        tuned = load_model(path, task="denoise", device=args.device)
        out = restore(test_n, "denoise", tuned, device=args.device).mean
        kept = tuned.card.metrics.get("best_iteration")
        rows.append(score(case, f"{name}, kept it {kept}", out, test_c, t.seconds))
    return rows


def pair_rows(args, tmp: Path) -> list[dict]:
    """The real SEM pair's validation rows 512+ (never trained on) with its own noise scaled
    (x1.41: as recorded at half the dwell time): paired fine-tuning on the left half, the
    self-supervised one on the noisy right half; the right half is scored. The bundled model
    already fits this noise, so here a fine-tune can mostly lose: the base margin's case."""
    noisy, clean = brain_pair()
    half = noisy.shape[1] // 2
    rows: list[dict] = []
    base = load_model(args.base, task="denoise", device=args.device)
    for gain in args.pair_gains:
        scaled = np.clip(np.rint(clean + gain * (noisy.astype(np.float64) - clean)), 0, 255).astype(np.uint8)
        test_n, test_c = scaled[:, half:], clean[:, half:]
        case = f"pair rows 512+, noise x{gain:g}"
        rows.append(score(case, "Gaussian (oracle sigma)", best_gaussian(test_n, test_c)[2], test_c))
        rows.append(score(case, f"{args.base} (bundled), fast", restore(test_n, "denoise", base, device=args.device).mean,
                          test_c))
        runs = [("paired fine-tune (left half)", scaled[:, :half], clean[:, :half]),
                ("self-supervised fine-tune (right half, noisy)", test_n, None)]
        for name, inp, tgt in runs:
            with Timer() as t:
                path = drain(finetune_iter("denoise", inp, tgt, base=args.base, out=tmp / f"pair{gain:g}{name.split()[0]}",
                                           iterations=args.iterations, device=args.device))
            tuned = load_model(path, task="denoise", device=args.device)
            out = restore(test_n, "denoise", tuned, device=args.device).mean
            kept = tuned.card.metrics.get("best_iteration")
            rows.append(score(case, f"{name}, kept it {kept}", out, test_c, t.seconds))
    return rows


def stack_rows(args, tmp: Path) -> list[dict]:
    """Self-supervised fine-tuning on a noisy stack, scored on the whole stack (it restores
    what it learnt from): the default (the blind spot) and the neighbouring slices forced, each
    restored with the z filter off and with the default (``auto``: averaged along z where the
    slices are alike), against the bundled model restored both ways."""
    rows: list[dict] = []
    base = load_model(args.base, task="denoise", device=args.device)
    cases = [("celegans", d) for d in args.stack_doses] + [("isbi", d) for d in args.stack_doses[:1]]
    for name, dose in cases:
        noisy, clean = stack_case(name, dose)
        case = f"{name} stack {'x'.join(map(str, noisy.shape))}, dose {dose:g}"
        rows.append(score(case, "noisy input", noisy, clean))
        rows.append(score(case, "Gaussian 3D (oracle sigma)", best_gaussian(noisy, clean)[2], clean))
        models = [(f"{args.base} (bundled), fast", base, None)]
        for label, objective in (("fine-tune, default", None), ("fine-tune, neighbouring slices", "neighbour-slices")):
            with Timer() as t:
                path = drain(finetune_iter("denoise", noisy, base=args.base, objective=objective, device=args.device,
                                           out=tmp / f"{name}{dose:g}{objective}", iterations=args.iterations))
            tuned = load_model(path, task="denoise", device=args.device)
            models.append((f"{label} ({tuned.card.training['objective']})", tuned, t.seconds))
        for label, model, seconds in models:
            for z_filter in ("off", "auto"):
                r = restore(noisy, "denoise", model, device=args.device, z_filter=z_filter)
                width = r.info.get("z_filter")
                how = f"z filter {z_filter}" + (f" ({width:g} slices)" if width else "")
                rows.append(score(case, f"{label}, {how}", r.mean, clean, seconds))
    return rows


def isotropic_rows(args, tmp: Path) -> list[dict]:
    """vEMDiffuse-a on a near-isotropic volume with 2 of every 3 slices dropped (the bundled
    model's factor): trained on the kept stack's own lateral planes only."""
    from scipy.interpolate import interp1d

    vol = tifffile.imread(need_shared() / "em3d" / "celegans_neariso_21x256x128.tif")[:, 192:256]
    rows: list[dict] = []
    for f in (3, 2):
        last = (vol.shape[0] - 1) // f * f
        kept_z = np.arange(0, last + 1, f)
        dropped = np.array([z for z in range(last + 1) if z % f])
        kept, truth = vol[kept_z], vol[dropped]
        case = f"celegans rows 192:256, x{f} ({len(kept)} kept slices)"
        lin = np.clip(np.rint(interp1d(kept_z, kept.astype(np.float64), axis=0)(dropped)), 0, 255).astype(np.uint8)
        rows.append(score(case, "linear interpolation", lin, truth))
        base = load_model(args.iso_base, task="isotropic-i", device=args.device)
        if base.card.z_factor == f:
            res = reconstruct_isotropic(kept, f, base, device=args.device)
            rows.append(score(case, f"{args.iso_base} (bundled, isotropic-i), fast", np.asarray(res.volume)[dropped], truth))
        else:
            rows.append({"case": case, "method": f"{args.iso_base} (bundled): made for factor {base.card.z_factor}"})
        try:
            with Timer() as t:
                path = drain(finetune_iter("isotropic-a", kept, base=args.iso_base, out=tmp / f"iso-a{f}", factor=f,
                                           iterations=args.iterations, device=args.device))
        except EMDiffuseError as exc:
            rows.append({"case": case, "method": f"vEMDiffuse-a fine-tune: {exc}"})
            continue
        tuned = load_model(path, task="isotropic-a", device=args.device)
        res = reconstruct_isotropic(kept, f, tuned, mode="a", device=args.device)
        rows.append(score(case, f"vEMDiffuse-a fine-tune on lateral planes, {args.iterations} it",
                          np.asarray(res.volume)[dropped], truth, t.seconds))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="demo-denoise")
    ap.add_argument("--iso-base", default="demo-isotropic")
    ap.add_argument("--iterations", type=int, default=200, help="the CLI default")
    ap.add_argument("--dose", type=float, default=30.0)
    ap.add_argument("--peers", default=None, help="JSON of benchmarks/peers.py --finetune-dose")
    ap.add_argument("--pair-gains", type=float, nargs="*", default=[1.41, 2.0],
                    help="noise scales of the pair case (none: skip it)")
    ap.add_argument("--inverted", type=float, nargs="*", default=[200.0],
                    help="doses of the inverted-contrast case (none: skip it)")
    ap.add_argument("--stack-doses", type=float, nargs="*", default=[30.0, 100.0],
                    help="doses of the noisy-stack cases (C. elegans at each, ISBI 2012 at the first; none: skip)")
    ap.add_argument("--skip-isotropic", action="store_true")
    ap.add_argument("--skip-denoise", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    peers = json.loads(Path(args.peers).read_text()) if args.peers else {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = [] if args.skip_denoise else denoise_rows(args, Path(tmp), peers)
        if args.pair_gains:
            rows += pair_rows(args, Path(tmp))
        for dose in args.inverted:
            rows += denoise_rows(args, Path(tmp), peers, inverted=dose)
        if args.stack_doses:
            rows += stack_rows(args, Path(tmp))
        if not args.skip_isotropic:
            rows += isotropic_rows(args, Path(tmp))
    print(f"fine-tuning at the CLI defaults ({args.iterations} iterations); denoising scored on the right half, "
          "stacks whole\n")
    print(table(rows, ["case", "method", "PSNR dB", "SSIM", "time s"]))


if __name__ == "__main__":
    main()
