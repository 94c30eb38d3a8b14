"""Exponential moving average of a module's weights, the weights that are evaluated and exported.

The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so short
runs are not dominated by the random initialisation (as in Diffusion Policy's EMA model).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ['ExponentialMovingAverage']


class ExponentialMovingAverage:
    """Shadow copy of a module whose floating-point weights track the module's with decay.

    Attributes:
        decay: the asymptotic decay (e.g. 0.9999).
        model: the shadow module (eval mode, no gradients); buffers are copied, not averaged
            (spectral normalisation's vectors are iterated on the averaged weights).
        updates: number of :meth:`update` calls so far.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        """Start the average at ``module``'s current weights.

        Raises:
            ValueError: ``decay`` is not in [0, 1).
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'EMA decay = {decay!r} is invalid: expected a number in [0, 1)')
        self.decay = float(decay)
        self.model = copy.deepcopy(module).eval()
        self.model.requires_grad_(False)
        self.updates = 0
        self._norms = self._spectral_norms()    # the module structure never changes
        vectors = {id(v) for norm, _ in self._norms for v in (norm._u, norm._v)}
        # by name, not identity: moving the shadow (.to) replaces its buffer tensors
        self._own = {name for name, b in self.model.named_buffers() if id(b) in vectors}

    def current_decay(self) -> float:
        """The decay the next update applies (warmed up over the first updates)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow weights towards ``module``'s: w <- d * w + (1 - d) * w_module.

        Parameters are averaged; buffers are copied, except spectral normalisation's
        power-iteration vectors, which are iterated on the averaged weight (as training
        iterates them on the live one). Averaging those vectors shrank them, far below unit
        length when the top singular direction moves during training, and an evaluated
        layer divides its weight by the estimate they give (measured: 0.01 for a true 1.37).
        """
        d = self.current_decay()
        params = dict(module.named_parameters())
        for name, shadow in self.model.named_parameters():
            shadow.mul_(d).add_(params[name].detach(), alpha=1.0 - d)
        buffers = dict(module.named_buffers())
        for name, shadow in self.model.named_buffers():
            if name not in self._own:
                shadow.copy_(buffers[name])
        for norm, weight in self._norms:
            norm._power_method(norm._reshape_weight_to_matrix(weight), norm.n_power_iterations)
        self.updates += 1

    def _spectral_norms(self) -> list[tuple[nn.Module, torch.Tensor]]:
        """The shadow's spectral normalisations (``torch.nn.utils.parametrizations``) and the
        weights they normalise."""
        found = []
        for module in self.model.modules():
            for plist in getattr(module, 'parametrizations', {}).values():
                found += [(p, plist.original) for p in plist
                          if hasattr(p, '_u') and hasattr(p, '_power_method')]
        return found

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights, loadable straight into a module of the same kind."""
        return self.model.state_dict()

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Restore shadow weights (from :meth:`state_dict`) and the update count."""
        self.model.load_state_dict(weights)
        self.updates = int(updates)
