"""Models: typed model cards, model files (safe loading and saving, published checkpoints),
the factories of the original code (``create_model``, ``define_network``, ...), the loaded
model, devices, and the registry that finds, lists and caches models."""
