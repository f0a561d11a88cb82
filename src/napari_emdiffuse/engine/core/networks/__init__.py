"""Networks: the EMDiffuse / vEMDiffuse UNet and the plain regression UNet."""

from .regression import RegressionUNet
from .unet import UNet, noise_level_embedding

__all__ = ["UNet", "RegressionUNet", "noise_level_embedding"]
