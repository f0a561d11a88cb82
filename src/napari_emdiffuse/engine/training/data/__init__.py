"""Training pairs for EMDiffuse / vEMDiffuse, as tensors in the model's range.

Every data set here hands out random crops ``(condition, target[, slice index])`` drawn with
a caller-owned :class:`numpy.random.Generator`, so a training run is reproducible from its
seed and resumable from the generator's state. Each keeps a band at the bottom of every
image (volumes: of every slice, i.e. the largest y) for validation; training crops never
touch it.

The preparation matches inference exactly (see :mod:`...inference.restore`): intensities are mapped to
[-1, 1] by the model card's rule fitted on the *degraded* image (the whole image or volume),
the same values are applied to the target; super-resolution conditions are the bicubic
upsampling of the normalised low-resolution image (:func:`...inference.normalise.make_condition`).

Kinds of data:

* :func:`.pairs.pair_data`: registered degraded/clean pairs (real low/high-dose images, or
  low/high-resolution pairs when ``scale > 1``).
* :func:`.pairs.sr_data`: super-resolution pairs made by downsampling clean images (area mean,
  or Gaussian blur then decimation).
* :class:`.noise.SimulatedNoiseData`: Poisson-Gaussian noise simulated on clean images at a range
  of doses (see :func:`.noise.simulate_noise`), fresh noise for every crop.
* :class:`.volumes.IsotropicData`: vEMDiffuse: from a volume, two planes ``factor`` apart as the
  condition and a plane between them as the target (``-i``: planes of an isotropic volume
  perpendicular to z; ``-a``: planes of an anisotropic volume perpendicular to y, so a
  lateral axis plays the role of z).
* :class:`.base.MixedData`: several of these, each crop drawn from one of them in proportion to
  its training area.
"""
