"""Train the peers (careamics CARE, Noise2Void) on the data our models saw, for a fixed
number of CPU minutes, and save their outputs on the held-out cases of
``benchmarks/quality.py`` (which prints them in the same tables, ``--peers``).

careamics is not a dependency of this project: run this script with an environment that
has it (see ../shared/PEERS.md for installing it beside a CPU torch), e.g.

    /work/benchenv/bin/python benchmarks/peers.py --minutes 12 --out build/peers
    python benchmarks/quality.py --peers build/peers/peers.json

* CARE: trained on rows 0:512 of pair_brain_4us (noisy 4 us -> clean 36 us), the real pair
  our denoiser trains on; applied to every denoising case.
* N2V (``--n2v``): trained on each noisy test image itself (it needs no clean target),
  and on the fine-tuning case of ``benchmarks/finetune.py`` (key ``finetune``).
* N2V on stacks (``--n2v-stacks``): 3D Noise2Void (axes ZYX, so it sees the neighbouring
  slices, as our z filter does) trained on each noisy stack of ``benchmarks/zfilter.py``
  itself (keys ``stack_celegans30``, ...), which prints it with ``--peers``.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _fake_torchvision() -> None:
    try:
        import torchvision  # noqa: F401  (a working install needs no placeholder)

        return
    except Exception:
        pass
    # careamics imports torchvision only for export and LVAE code, which CARE/N2V training
    # and prediction never reach; no CPU torchvision wheel matches torch 2.13 here.
    # torchmetrics also believes it is there and imports a few names at import time.
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.models", "torchvision.ops"):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__getattr__ = lambda attr: None  # any name: a placeholder, never called here
        sys.modules.setdefault(name, mod)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]


def cases(doses: list[float]) -> dict[str, np.ndarray]:
    """The noisy inputs of quality.py's denoising table, by key."""
    sys.path.insert(0, str(ROOT / "src"))
    from napari_emdiffuse.engine.training.data.noise import simulate_noise

    pair = SHARED / "em2d" / "pair_brain_4us"
    noisy = tifffile.imread(pair / "noisy_4us.tif")[512:768]
    out = {"pair256": noisy[:256, :256], "pair768": noisy}
    clean = tifffile.imread(pair / "clean_36us.tif")[512:768, :256]
    for gain in (1.41, 2.0):  # the pair's noise scaled, as quality.py makes it
        n = noisy[:256, :256].astype(np.float64)
        out[f"pair256x{gain:g}"] = np.clip(np.rint(clean + gain * (n - clean)), 0, 255).astype(np.uint8)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import registered_pair_cases

    full_clean = tifffile.imread(pair / "clean_36us.tif")[512:768]
    for _, n, _, key in registered_pair_cases(noisy, full_clean):
        if isinstance(key, str):  # the noise-scaled rows: inputs of their own (the others are crops)
            out[key] = n
    liver = tifffile.imread(SHARED / "em2d" / "clean" / "openorganelle_mouse_liver_0.tif")
    for d in doses:
        out[f"dose{d:g}"] = simulate_noise(liver, d, rng=np.random.default_rng(int(d)), lo=0, hi=255).astype(np.uint8)
    out["sample"] = tifffile.imread(ROOT / "resources" / "samples" / "fibsem_liver_noisy.tif")
    return out


def _trainer_params(minutes: float) -> dict:
    whole, frac = divmod(minutes, 1)
    stamp = f"00:00:{int(whole):02d}:{int(round(frac * 60)):02d}"
    return {"max_time": stamp, "enable_progress_bar": False}


def _no_early_stop() -> dict:
    return {"monitor": "val_loss", "patience": 10_000}  # the default patience of 3 epochs stops a short run far too early


def train_care(minutes: float, work: Path):
    from careamics import CAREamist
    from careamics.config import create_advanced_care_config

    pair = SHARED / "em2d" / "pair_brain_4us"
    x = tifffile.imread(pair / "noisy_4us.tif")[:512].astype(np.float32)
    y = tifffile.imread(pair / "clean_36us.tif")[:512].astype(np.float32)
    cfg = create_advanced_care_config(
        experiment_name="care_pair", data_type="array", axes="YX", patch_size=[64, 64], batch_size=16,
        num_epochs=10_000, trainer_params=_trainer_params(minutes), early_stopping_params=_no_early_stop(),
        num_workers=0, lr_scheduler="StepLR", lr_scheduler_params={"step_size": 10**9},
    )
    careamist = CAREamist(cfg, work_dir=work / "care")
    careamist.train(train_data=x[:448], train_data_target=y[:448], val_data=x[448:], val_data_target=y[448:])
    return careamist


def predict(careamist, image: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    tile = (min(256, image.shape[0] // 16 * 16), min(256, image.shape[1] // 16 * 16))
    out = careamist.predict(image.astype(np.float32), axes="YX", tile_size=tile, tile_overlap=(32, 32))
    if isinstance(out, tuple):  # (predictions, sources) in careamics 0.3
        out = out[0]
    while isinstance(out, (list, tuple)):
        out = out[0]
    out = np.squeeze(np.asarray(out))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), time.perf_counter() - t0


def stack_cases(doses: list[float]) -> dict[str, np.ndarray]:
    """The noisy C. elegans stacks of zfilter.py, by key."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "src"))
    from _common import stack_case

    return {f"stack_celegans{d:g}": stack_case("celegans", d)[0] for d in doses}


def train_n2v_stack(
    key: str, stack: np.ndarray, minutes: float, work: Path, struct: str = "none"
) -> tuple[np.ndarray, float]:
    """3D Noise2Void trained on ``stack`` itself for ``minutes``; its prediction and seconds.
    ``struct``: careamics' structured mask (``"square"`` hides the pixels around the masked one
    too, for noise correlated between neighbouring pixels, as short-dwell SEM's is)."""
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    cfg = create_advanced_n2v_config(
        experiment_name=f"n2v3d_{struct}_{key}", data_type="array", axes="ZYX", patch_size=[8, 64, 64], batch_size=8,
        num_epochs=10_000, trainer_params=_trainer_params(minutes), num_workers=0, struct_n2v_axes=struct,
        struct_n2v_span=3,
    )
    n2v = CAREamist(cfg, work_dir=work / f"n2v3d_{struct}_{key}")
    n2v.train(train_data=stack.astype(np.float32))
    t0 = time.perf_counter()
    out = n2v.predict(stack.astype(np.float32), axes="ZYX", tile_size=(16, 64, 64), tile_overlap=(4, 16, 16))
    while isinstance(out, (list, tuple)):
        out = out[0]
    out = np.squeeze(np.asarray(out))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=12.0, help="training wall-clock per peer")
    ap.add_argument("--doses", default="30,100,300")
    ap.add_argument("--n2v", action="store_true", help="also train Noise2Void on each test image")
    ap.add_argument("--n2v-keys", default="pair256,pair256x1.41,pair256x2,sample,finetune",
                    help="the cases N2V trains on (each its own image)")
    ap.add_argument("--n2v-only", action="store_true", help="add N2V entries to an existing peers.json in --out")
    ap.add_argument("--n2v-stacks", type=float, nargs="*", default=None, metavar="DOSE",
                    help="add 3D N2V entries for zfilter.py's C. elegans stacks at these doses (e.g. 30 100)")
    ap.add_argument("--struct", default="none", choices=["none", "square", "horizontal", "cross"],
                    help="careamics' structured N2V mask for --n2v/--n2v-only and --n2v-stacks (square: for "
                         "noise correlated between neighbouring pixels)")
    ap.add_argument("--out", default=str(ROOT / "build" / "peers"))
    ap.add_argument("--finetune-dose", type=float, default=30.0, help="dose of benchmarks/finetune.py's case")
    args = ap.parse_args()
    _fake_torchvision()
    import torch

    torch.set_num_threads(1)  # the CPU budget of our own training runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = cases([float(d) for d in args.doses.split(",") if d])
    listing = out / "peers.json"
    keep = args.n2v_only or args.n2v_stacks is not None
    result: dict = json.loads(listing.read_text()) if keep and listing.is_file() else {}

    def save() -> None:  # after every entry: a later failure keeps what is done
        tmp = listing.with_suffix(".json.partial")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(listing)

    if args.n2v_stacks is not None:
        name = "N2V 3D" if args.struct == "none" else f"StructN2V 3D ({args.struct})"
        for key, stack in stack_cases(args.n2v_stacks).items():
            pred, seconds = train_n2v_stack(key, stack, args.minutes / 2, out, args.struct)
            path = out / f"n2v3d_{args.struct}_{key}.npy"
            np.save(path, pred)
            result.setdefault(key, {})[name] = {"output": str(path), "minutes": args.minutes / 2, "seconds": seconds}
            save()
            print(f"{name} {key}: done", flush=True)
        print(f"wrote {listing}")
        return
    if not args.n2v_only:
        care = train_care(args.minutes, out)
        for key, image in inputs.items():
            pred, seconds = predict(care, image)
            np.save(out / f"care_{key}.npy", pred)
            result.setdefault(key, {})["CARE"] = {"output": str(out / f"care_{key}.npy"), "minutes": args.minutes,
                                                  "seconds": seconds}
            save()
            print(f"CARE {key}: done in {seconds:.1f} s", flush=True)
    if args.n2v or args.n2v_only:
        from careamics import CAREamist
        from careamics.config import create_advanced_n2v_config

        sys.path.insert(0, str(Path(__file__).parent))
        from finetune import liver_case

        inputs["finetune"] = liver_case(args.finetune_dose)[0]
        for key in args.n2v_keys.split(","):
            image = inputs[key].astype(np.float32)
            tag = "n2v" if args.struct == "none" else f"n2v_{args.struct}"
            cfg = create_advanced_n2v_config(
                experiment_name=f"{tag}_{key}".replace(".", "_"),  # careamics allows letters, digits, _, - and spaces
                data_type="array", axes="YX", patch_size=[64, 64], batch_size=16,
                num_epochs=10_000, trainer_params=_trainer_params(args.minutes / 2), num_workers=0,
                struct_n2v_axes=args.struct, struct_n2v_span=3,
            )
            n2v = CAREamist(cfg, work_dir=out / f"{tag}_{key}")
            n2v.train(train_data=image)
            pred, seconds = predict(n2v, image)
            np.save(out / f"{tag}_{key}.npy", pred)
            name = "N2V" if args.struct == "none" else f"StructN2V ({args.struct})"
            result.setdefault(key, {})[name] = {"output": str(out / f"{tag}_{key}.npy"), "minutes": args.minutes / 2,
                                                "seconds": seconds}
            save()
            print(f"{name} {key}: done", flush=True)
    save()
    print(f"wrote {listing}")


if __name__ == "__main__":
    main()
