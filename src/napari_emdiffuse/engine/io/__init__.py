"""Files: TIFF and zarr / OME-Zarr reading and atomic writing, calibration (pixel size,
units, axes), atomic writes, and where the shipped resources live. Depends on nothing else in
the engine (but its errors)."""
