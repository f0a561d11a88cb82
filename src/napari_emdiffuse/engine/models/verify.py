"""Check a port of weights: rebuild the network of a reference config, load a checkpoint
and recompute the original implementation's outputs for fixed inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import samplers
from ..core.diffusion import Network
from ..errors import EMDiffuseError
from .cards import read_original_config
from .factory import define_network
from .files import check_state_dict, clean_published_state_dict, load_state_dict_file

__all__ = ["verify_checkpoint"]


def verify_checkpoint(
    checkpoint: str | Path,
    reference_json: str | Path,
    reference_npz: str | Path,
    *,
    tolerance: float = 1e-4,
) -> tuple[list[tuple[str, float, bool]], bool]:
    """Compare every reference array with our recomputation.

    The noise prediction ``t{t}_eps`` comes from our network. The reverse-step arrays
    (``x0_clamped``, ``posterior_mean``, ``posterior_log_variance``) are recomputed by our
    step arithmetic from the reference's own noise prediction: at high t, x0 multiplies
    the noise by sqrt(1/gamma - 1) (up to 8e4 at t=700), so float32 rounding differences
    of 1e-6 in the network output (a different BLAS, thread count or CPU) would swamp a
    1e-4 comparison without saying anything about the port.

    Returns
    -------
    rows : list of (name, max abs error, passed)
    ok : bool
        True when every row passed.
    """
    unet_cfg, sched, raw = read_original_config(reference_json)
    ref = np.load(reference_npz)
    sd = clean_published_state_dict(load_state_dict_file(checkpoint))
    vem = any(k.startswith("denoise_fn.channel_embed.") for k in sd)
    unet_cfg = unet_cfg.model_copy(update={"slice_embedding": vem})
    net = Network(define_network(unet_cfg), sched.model_dump())
    check_state_dict({k: tuple(v.shape) for k, v in sd.items()},
                     {k: tuple(v.shape) for k, v in net.state_dict().items()}, f"'{checkpoint}'")
    net.load_state_dict(sd)
    net.eval()
    cases = raw.get("cases") or sorted({int(k[1:].split("_")[0]) for k in ref.files if k.startswith("t")}, reverse=True)
    try:
        y_cond = torch.from_numpy(ref["y_cond"])
        y_t = torch.from_numpy(ref["y_t"])
    except KeyError as exc:
        raise EMDiffuseError(f"reference '{reference_npz}' lacks {exc}") from None
    slice_index = torch.from_numpy(ref["slice_index"]) if "slice_index" in ref.files else None
    s = net.test_schedule
    rows: list[tuple[str, float, bool]] = []
    with torch.no_grad():
        for t in cases:
            ours = net.p_mean_variance(y_cond, y_t, int(t), slice_index)
            g = float(s.gammas[t])
            eps_ref = torch.from_numpy(ref[f"t{t}_eps"])
            x0 = samplers.predict_x0(y_t, eps_ref, g, clip=True)
            mean = float(s.posterior_mean_coef1[t]) * x0 + float(s.posterior_mean_coef2[t]) * y_t
            recomputed = {
                "eps": ours["eps"],
                "x0_clamped": x0,
                "posterior_mean": mean,
                "posterior_log_variance": ours["posterior_log_variance"],
            }
            for name, value in recomputed.items():
                key = f"t{t}_{name}"
                if key not in ref.files:
                    continue
                err = float(np.abs(value.numpy().astype(np.float64) - ref[key].astype(np.float64)).max())
                rows.append((key, err, err <= tolerance))
    if not rows:
        raise EMDiffuseError(f"reference '{reference_npz}' holds no t<step>_<array> entries to compare")
    return rows, all(r[2] for r in rows)
