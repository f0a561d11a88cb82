"""The method, independent of files and images: networks (the EMDiffuse / vEMDiffuse UNet and
the one-pass regression UNet), noise schedules, the conditional diffusion ``Network``, its
samplers, losses, EMA of weights and image-quality metrics."""
