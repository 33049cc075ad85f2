"""Solution reuse (FPDM paper Sec. 3.3 and 5.3, Fig. 6): warm-start the fixed point solve at each
sampling step from the previous step's solution instead of from the pre-layer output.

The state is an explicit object owned by the sampling loop (not hidden inside the model, unlike
the official ``last_solution`` attribute), created or reset per image batch, so two batches or two
samplers can never leak solutions into each other.
"""

from __future__ import annotations

import torch


class WarmStart:
    """Holds the last fixed point solution of one batch and the timestep it was solved at."""

    def __init__(self) -> None:
        self.z: torch.Tensor | None = None
        self.t: float | None = None
        self.uses = 0

    def reset(self) -> None:
        self.z, self.t, self.uses = None, None, 0

    @staticmethod
    def check_uniform_timestep(t: torch.Tensor) -> float:
        """Reuse needs one timestep per batch: the previous solution belongs to the previous step."""
        t_flat = t.reshape(-1)
        if t_flat.numel() and not bool((t_flat == t_flat[0]).all()):
            raise ValueError(
                "solution reuse needs every sample of a batch at the same timestep, got a batch with mixed "
                "timesteps; set sample.reuse=false or sample batches that share a timestep"
            )
        return float(t_flat[0]) if t_flat.numel() else float("nan")

    def initial(self, z_default: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The warm start for this call: the stored solution when it fits, else ``z_default``."""
        self.check_uniform_timestep(t)
        if self.z is None:
            return z_default
        if self.z.shape != z_default.shape:
            raise ValueError(
                f"warm start of shape {tuple(self.z.shape)} does not fit a batch of shape {tuple(z_default.shape)}: "
                "reset the WarmStart between batches"
            )
        self.uses += 1
        return self.z.to(z_default.dtype)

    def update(self, z: torch.Tensor, t: torch.Tensor) -> None:
        self.z = z.detach()
        self.t = self.check_uniform_timestep(t)
