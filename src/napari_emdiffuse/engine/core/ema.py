"""Exponential moving average (EMA) of a network's weights.

Diffusion models are sampled with the averaged weights: they are far less noisy than the
last optimiser step. The shadow copy is kept in float32 whatever precision the model
trains in, so a decay of 0.9999 does not round every update away in half precision.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of a module's floating-point parameters.

    Buffers (e.g. batch-norm statistics) are not averaged but copied from the model at
    every update, so the shadow always matches the model's latest running statistics.

    Parameters
    ----------
    model : nn.Module
        The module whose parameters are tracked; the shadow starts as a float32 copy.
    decay : float, optional
        Weight of the old average: ``shadow = decay * shadow + (1 - decay) * param``.
    start_step : int, optional
        Before this step :meth:`update` does nothing; at it the shadow becomes an exact
        copy of the weights (averaging from random initial weights would only slow the
        average down).
    update_every : int, optional
        Average every this many steps after ``start_step``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> ema = EMA(net, decay=0.5)
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(2.0)
    >>> ema.update(net, step=0)          # start_step: exact copy
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(4.0)
    >>> ema.update(net, step=1)          # 0.5 * 2 + 0.5 * 4
    >>> float(ema.shadow["weight"])
    3.0
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float = 0.9999,
        start_step: int = 0,
        update_every: int = 1,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"update_every must be at least 1, got {update_every}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.update_every = int(update_every)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self._model = model  # template for shadow_module(); its weights are not used
        self._copy_from(model)

    # -- tracking ---------------------------------------------------------------------

    @staticmethod
    def _params(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        # Integer parameters cannot be averaged meaningfully; they are left alone.
        return ((n, p) for n, p in model.named_parameters() if p.is_floating_point())

    @torch.no_grad()
    def _copy_from(self, model: nn.Module) -> None:
        self.shadow = {n: p.detach().to(torch.float32, copy=True) for n, p in self._params(model)}
        self._copy_buffers(model)

    @torch.no_grad()
    def _copy_buffers(self, model: nn.Module) -> None:
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the model's current weights into the average at training step ``step``.

        Parameters
        ----------
        model : nn.Module
            The module being trained (same architecture as at construction).
        step : int
            Global training step.

        Examples
        --------
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> ema = EMA(net, start_step=100)
        >>> ema.update(net, step=5)   # before start_step: nothing happens
        >>> ema.num_updates
        0
        """
        if step < self.start_step:
            return
        if step == self.start_step:
            self._copy_from(model)
            self.num_updates += 1
            return
        if (step - self.start_step) % self.update_every:
            return
        params = dict(self._params(model))
        if params.keys() != self.shadow.keys():
            raise ValueError("model parameters do not match the ones the EMA was created with")
        for name, p in params.items():
            s = self.shadow[name]
            if s.device != p.device:
                s = self.shadow[name] = s.to(p.device)
            # In place: shadow += (1 - decay) * (param - shadow) == decay*shadow + (1-decay)*param
            s.lerp_(p.detach().to(torch.float32), 1.0 - self.decay)
        self._copy_buffers(model)
        self.num_updates += 1

    # -- using the average ------------------------------------------------------------

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters and buffers with the averaged ones.

        Examples
        --------
        >>> import torch
        >>> net = torch.nn.Linear(1, 1)
        >>> ema = EMA(net)
        >>> ema.shadow["bias"].fill_(7.0)
        tensor([7.])
        >>> ema.copy_to(net)
        >>> net.bias.item()
        7.0
        """
        for name, p in self._params(model):
            p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))
        for name, b in model.named_buffers():
            if name in self.buffers:
                b.copy_(self.buffers[name].to(device=b.device, dtype=b.dtype))

    @contextmanager
    def averaged(self, model: nn.Module) -> Iterator[nn.Module]:
        """Swap the averaged weights into ``model`` for the duration of a ``with`` block.

        The original parameters and buffers are restored on exit, also when the block
        raises, so validation with EMA weights cannot leak into training.

        Examples
        --------
        >>> import torch
        >>> net = torch.nn.Linear(1, 1)
        >>> ema = EMA(net)
        >>> _ = ema.shadow["bias"].fill_(7.0)
        >>> before = net.bias.item()
        >>> with ema.averaged(net):
        ...     net.bias.item()
        7.0
        >>> net.bias.item() == before
        True
        """
        with torch.no_grad():
            saved_params = {n: p.detach().clone() for n, p in self._params(model)}
            saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        try:
            self.copy_to(model)
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._params(model):
                    p.copy_(saved_params[name])
                for name, b in model.named_buffers():
                    b.copy_(saved_buffers[name])

    def shadow_module(self, model: nn.Module | None = None) -> nn.Module:
        """A deep copy of the model carrying the averaged weights (for saving or inference).

        Parameters
        ----------
        model : nn.Module, optional
            Architecture to copy; default the module the EMA was created with.

        Examples
        --------
        >>> import torch
        >>> net = torch.nn.Linear(1, 1)
        >>> ema = EMA(net)
        >>> _ = ema.shadow["bias"].fill_(7.0)
        >>> ema.shadow_module().bias.item(), net.bias.item() != 7.0
        (7.0, True)
        """
        clone = copy.deepcopy(self._model if model is None else model)
        self.copy_to(clone)
        return clone

    # -- persistence ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume averaging: shadow tensors, buffers and settings.

        Examples
        --------
        >>> import torch
        >>> ema = EMA(torch.nn.Linear(1, 1), decay=0.99)
        >>> sorted(ema.state_dict())
        ['buffers', 'decay', 'num_updates', 'shadow', 'start_step', 'update_every']
        """
        return {
            "shadow": {n: t.detach().clone() for n, t in self.shadow.items()},
            "buffers": {n: t.detach().clone() for n, t in self.buffers.items()},
            "decay": self.decay,
            "start_step": self.start_step,
            "update_every": self.update_every,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Examples
        --------
        >>> import torch
        >>> a = EMA(torch.nn.Linear(1, 1), decay=0.9)
        >>> b = EMA(torch.nn.Linear(1, 1))
        >>> b.load_state_dict(a.state_dict())
        >>> b.decay, bool(torch.equal(a.shadow["weight"], b.shadow["weight"]))
        (0.9, True)
        """
        missing = {"shadow", "decay", "start_step", "update_every", "num_updates"} - state.keys()
        if missing:
            raise KeyError(f"EMA state is missing {', '.join(sorted(missing))}")
        if self.shadow and state["shadow"].keys() != self.shadow.keys():
            raise ValueError("EMA state does not match this model's parameters")
        self.shadow = {n: t.detach().to(torch.float32, copy=True) for n, t in state["shadow"].items()}
        self.buffers = {n: t.detach().clone() for n, t in state.get("buffers", {}).items()}
        self.decay = float(state["decay"])
        self.start_step = int(state["start_step"])
        self.update_every = int(state["update_every"])
        self.num_updates = int(state["num_updates"])
