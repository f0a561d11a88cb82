"""Self-supervised denoising of a stack from its neighbouring slices (Noise2Noise).

Neighbouring slices of a finely sectioned volume (FIB-SEM or block-face SEM with voxels close
to isotropic) show nearly the same structure, and each was recorded with its own noise. So
the mean of a slice's two neighbours is a target whose noise is independent of the slice's own,
and whose structure differs from the slice's only by what changes over one section (to first
order, not at all: the two neighbours' changes cancel). A network trained to map the slice onto
that target learns the clean slice, as Noise2Noise does from two recordings of one field. Unlike
a blind spot (:mod:`.selfsup`), this holds for any noise within a slice, spatially correlated
or not, and every pixel of every crop supervises the network, not 1 % of them.

On the near-isotropic C. elegans volume with simulated correlated noise (dose 30, neighbour
correlation 0.5), 200 iterations from the bundled predictor raised the stack from 24.35 dB to
24.92 (the anchored blind spot: 24.71; dose 100: 26.28 -> 26.68, blind spot 26.48; 7 slices
only: 24.40 -> 24.82). It needs slices that are alike: on ISBI 2012 (ssTEM sections 50 nm
apart, 12x the pixel size) the same fine-tune fell from 21.56 to 16.70 dB, while its own
validation against the neighbours' mean rose by 0.9 dB; on C. elegans with every third slice
kept it lost 0.37 dB. Nothing in the training tells those apart
(:func:`~..core.alikeness.slice_alikeness` does).

It is not the default: a restoration averages an alike stack along z
(:mod:`..inference.zfilter`), which uses the neighbouring slices at inference, and after that
the blind spot's fine-tune led (C. elegans, dose 30: 25.58 against 25.19 dB; dose 100: 27.11
against 26.64), and the bundled model alone led both (25.70 / 27.20).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["neighbour_pairs", "MIN_SLICES"]

#: A slice needs a neighbour on each side.
MIN_SLICES = 3

def neighbour_pairs(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs of a stack (Z, Y, X): every inner slice and the mean of its two neighbours.

    Returns ``(inputs, targets)``: ``stack[1:-1]`` (a view, in the stack's dtype) and the float32
    means of ``stack[:-2]`` and ``stack[2:]``. Never modifies ``stack``.

    Examples
    --------
    >>> stack = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    >>> inputs, targets = neighbour_pairs(stack)
    >>> inputs.shape, targets.dtype
    ((2, 2, 2), dtype('float32'))
    >>> float(targets[0, 0, 0]), int(stack[1, 0, 0])  # slices 0 and 2 average to slice 1 here
    (4.0, 4)
    """
    _check_stack(stack)
    a = np.asarray(stack)
    return a[1:-1], ((a[:-2].astype(np.float32) + a[2:].astype(np.float32)) / 2).astype(np.float32)


def _check_stack(stack: Any) -> None:
    shape = tuple(getattr(stack, "shape", ()))
    if len(shape) != 3:
        raise InputError(f"learning from neighbouring slices needs a stack (Z, Y, X); the input has {len(shape)} dimensions")
    if shape[0] < MIN_SLICES:
        raise InputError(
            f"learning from neighbouring slices needs at least {MIN_SLICES} slices; the stack has {shape[0]}"
        )
