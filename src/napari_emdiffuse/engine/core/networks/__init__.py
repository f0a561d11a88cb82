"""Networks: the EMDiffuse / vEMDiffuse UNet and the plain regression UNet."""

from .regression import RegressionUNet, RegressionUNetStd
from .unet import UNet, noise_level_embedding

__all__ = ["UNet", "RegressionUNet", "RegressionUNetStd", "noise_level_embedding"]
