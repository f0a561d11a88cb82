"""Inference: normalisation, tile plans and blending, per-step merged sampling of a whole
canvas, block plans for large inputs, 2D restoration and isotropic reconstruction."""
