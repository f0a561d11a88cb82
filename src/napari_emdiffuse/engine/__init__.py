"""The engine: PyTorch + numpy only (no napari, no Qt), usable headless.

Networks, noise schedules, the diffusion ``Network`` and its samplers, losses, metrics,
EMA, typed configs and factories, model files, and the restoration, isotropic
reconstruction and training pipelines, each a generator of progress events.
"""
