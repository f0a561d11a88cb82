"""Speed of the restoration path, side by side, from one run.

(a) UNet forward throughput (256x256 tiles/s): eager fp32, channels_last, autocast, compiled
(b) whole `emdiffuse denoise` commands: reference (1000-step DDPM, K=2) vs fast vs balanced,
    with PSNR against the 36 us image of pair_brain_4us (a crop, so the reference finishes)
(c) achieved GFLOP/s of the UNet forward vs a large matmul (fraction of practical peak)
(d) tiling overhead: a 1024x1024 image vs the same pixels as exact non-overlapping tiles
(e) peak memory per tile size (what the automatic tile chooser relies on)

    python benchmarks/speed.py [--model demo-denoise] [--device auto] [--crop 128] [--skip-reference]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from _common import ROOT, Timer, brain_pair, table
from napari_emdiffuse.engine.core.metrics import psnr
from napari_emdiffuse.engine.models.device import resolve_device
from napari_emdiffuse.engine.models.registry import load_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def forward_table(net: torch.nn.Module, device: torch.device, batch: int, tile: int, compile_: bool) -> list[dict]:
    net = net.to(device).eval()
    x = torch.randn(batch, net.in_channel, tile, tile, device=device)
    g = torch.rand(batch, device=device)
    reps = 3 if device.type == "cpu" else 20
    rows = []

    def run(model, inp, dtype=None):
        def f():
            with torch.no_grad(), (torch.autocast(device.type, dtype=dtype) if dtype else _null()):
                model(inp, g)
        return f

    variants = [("eager fp32", net, x, None)]
    cl_net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    variants.append(("channels_last", cl_net, xc, None))
    lowp = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    variants.append((f"channels_last + autocast {str(lowp).split('.')[-1]}", cl_net, xc, lowp))
    if compile_:
        variants.append(("compiled + channels_last + autocast", torch.compile(cl_net), xc, lowp))
    base = None
    for name, model, inp, dtype in variants:
        try:
            dt = _time(run(model, inp, dtype), device, reps)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports what failed
            rows.append({"variant": name, "tiles/s": f"failed: {type(exc).__name__}"})
            continue
        tps = batch / dt
        base = base or tps
        rows.append({"variant": name, "tiles/s": f"{tps:.2f}", "speed-up": f"{tps / base:.2f}x"})
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def flops_table(net: torch.nn.Module, device: torch.device, tiles: list[int], batch: int) -> list[dict]:
    """Achieved GFLOP/s of the default forward per tile size vs a large matmul.

    FLOPs are counted on the explicit attention (the flop counter does not see inside the
    fused kernel); the timing is of the default, fused path. Same arithmetic either way.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from napari_emdiffuse.engine.core.networks import unet as unet_module

    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    mm = _time(lambda: a @ b, device, 3 if device.type == "cpu" else 20)
    mm_gflops = 2 * n**3 / mm / 1e9
    rows = []
    for tile in tiles:
        x = torch.randn(batch, net.in_channel, tile, tile, device=device)
        g = torch.rand(batch, device=device)
        fused, unet_module._FUSED_ATTENTION = unet_module._FUSED_ATTENTION, False
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                net(x, g)
        finally:
            unet_module._FUSED_ATTENTION = fused
        with torch.no_grad():
            dt = _time(lambda: net(x, g), device, 2 if device.type == "cpu" else 20)
        gflops = fc.get_total_flops() / dt / 1e9
        rows.append({"kernel": f"UNet forward (batch {batch}, {tile}^2)", "GFLOP/s": f"{gflops:.1f}", "of matmul": f"{100 * gflops / mm_gflops:.0f}%"})
    rows.append({"kernel": f"matmul {n}x{n} fp32", "GFLOP/s": f"{mm_gflops:.1f}", "of matmul": "100%"})
    return rows


def command_table(model: str, device: str, crop: int, skip_reference: bool) -> list[dict]:
    noisy, clean = brain_pair()
    noisy, clean = noisy[:crop, :crop], clean[:crop, :crop]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "noisy.tif"
        tifffile.imwrite(src, noisy)
        presets = ["fast", "balanced"] + ([] if skip_reference else ["reference"])
        times = {}
        for preset in presets:
            out = Path(tmp) / f"{preset}.tif"
            cmd = [sys.executable, "-m", "napari_emdiffuse.cli", "denoise", str(src), "-o", str(out),
                   "--model", model, "--preset", preset, "--device", device]
            with Timer() as t:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                rows.append({"preset": preset, "time s": f"failed: {proc.stderr.strip()[-200:]}"})
                continue
            times[preset] = t.seconds
            res = tifffile.imread(out)
            rows.append({"preset": preset, "time s": f"{t.seconds:.1f}", "PSNR dB": f"{psnr(res, clean, data_range=255):.2f}"})
        if "reference" in times:
            for r in rows:
                if r["preset"] in times:
                    r["vs reference"] = f"{times['reference'] / times[r['preset']]:.1f}x faster"
    rows.insert(0, {"preset": "noisy input", "PSNR dB": f"{psnr(noisy, clean, data_range=255):.2f}"})
    return rows


def tiling_table(m, device: torch.device) -> list[dict]:
    from napari_emdiffuse.api import restore

    img = (np.random.default_rng(0).random((1024, 1024)) * 255).astype(np.uint8)
    with Timer() as t1:
        restore(img, "denoise", m, steps=2, tile=256, overlap=32, device=str(device))
    with Timer() as t2:
        restore(img, "denoise", m, steps=2, tile=256, overlap=0, device=str(device))
    return [
        {"layout": "1024^2, tile 256, overlap 32 (default)", "time s": f"{t1.seconds:.1f}", "overhead": f"{100 * (t1.seconds / t2.seconds - 1):.0f}%"},
        {"layout": "1024^2 as 16 exact 256^2 tiles", "time s": f"{t2.seconds:.1f}", "overhead": "0%"},
    ]


# Peak memory of one restoration, measured in a fresh process: a thread samples the resident
# set every 2 ms (ru_maxrss would also count the peak of imports and model loading).
_MEM_CHILD = """
import json, sys, threading, time, torch, numpy as np
from napari_emdiffuse.engine.models.registry import load_model
from napari_emdiffuse.api import restore

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

m = load_model(sys.argv[1], task="denoise", device=sys.argv[3])
tile = int(sys.argv[2])
img = (np.random.default_rng(0).random((tile, tile)) * 255).astype(np.uint8)
restore(img[:64, :64], "denoise", m, steps=1, tile=64, batch=1, device=sys.argv[3])  # warm-up
peak, done = [0], [False]
def watch():
    while not done[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
base = rss()
t = threading.Thread(target=watch); t.start()
if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
g0 = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
restore(img, "denoise", m, steps=1, tile=tile, batch=1, device=sys.argv[3])
done[0] = True; t.join()
gpu = (torch.cuda.max_memory_allocated() - g0) if torch.cuda.is_available() else 0
print(json.dumps({"rss_mb": (max(peak[0], rss()) - base) / 2**20, "gpu_mb": gpu / 2**20, "inner": m.card.network.inner_channel}))
"""


def memory_table(model: str, device: str, tiles=(128, 256, 512)) -> list[dict]:
    """Peak memory above the loaded model per tile, and bytes per pixel per inner channel:
    the constant ``canvas.auto_tile`` uses (48 * 4 bytes) to fit tiles in free GPU memory."""
    rows = []
    for tile in tiles:
        proc = subprocess.run([sys.executable, "-c", _MEM_CHILD, model, str(tile), device], capture_output=True, text=True)
        if proc.returncode:
            rows.append({"tile": tile, "peak MB": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        d = json.loads(proc.stdout.strip().splitlines()[-1])
        mb = d["gpu_mb"] if d["gpu_mb"] > 0 else d["rss_mb"]
        rows.append({
            "tile": tile,
            "peak MB": f"{mb:.0f} ({'GPU' if d['gpu_mb'] > 0 else 'CPU RSS'})",
            "bytes/px/inner ch": f"{mb * 2**20 / (tile * tile) / d['inner']:.0f}",
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-denoise")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--compile", action="store_true", help="include torch.compile (minutes on CPU)")
    ap.add_argument("--published-size", action="store_true", help="time the published network (inner 32) too")
    args = ap.parse_args()
    device = resolve_device(args.device)
    m = load_model(args.model, task="denoise", device=device)
    batch = args.batch or (4 if device.type == "cpu" else 32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; model {m.card.name}\n")
    print("(a) UNet forward, 256x256 tiles")
    print(table(forward_table(m.unet, device, batch, 256, args.compile), ["variant", "tiles/s", "speed-up"]))
    if args.published_size:
        from napari_emdiffuse.engine.models.factory import create_EMDiffuse

        pub = create_EMDiffuse("EMDiffuse-n").unet
        print("\n(a') published-size UNet (inner 32, 15.7 M parameters)")
        print(table(forward_table(pub, device, batch, 256, args.compile), ["variant", "tiles/s", "speed-up"]))
    print(f"\n(b) whole `emdiffuse denoise` commands on a {args.crop}^2 crop of pair_brain_4us (held-out rows)")
    print(table(command_table(args.model, str(device), args.crop, args.skip_reference), ["preset", "time s", "PSNR dB", "vs reference"]))
    print("\n(c) achieved throughput")
    tiles = sorted({256, m.card.tile})  # 256^2 as in (a), and the model's default tile
    print(table(flops_table(m.unet.eval(), device, tiles, batch), ["kernel", "GFLOP/s", "of matmul"]))
    print("\n(d) tiling overhead (2 sampler steps)")
    print(table(tiling_table(m, device), ["layout", "time s", "overhead"]))
    print("\n(e) peak memory of one restoration per tile size (batch 1)")
    print(table(memory_table(args.model, str(device)), ["tile", "peak MB", "bytes/px/inner ch"]))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
