"""The surrogate predictor: a small ensemble of MLPs from an architecture to its objectives, and the joint training of
generator and surrogate on the queried architectures with per-architecture weights.

The surrogate reads either the architecture's vector (``reads="encoding"``) or its latent mean (``reads="latent"``,
then the prediction loss also shapes the encoder, so the latent space is ordered by performance); the ensemble's
spread says how sure the prediction is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hmnas_nni.common.generator import ArchitectureVAE


class Surrogate(nn.Module):
    """An ensemble of ``members`` MLPs (two hidden layers), each mapping an architecture's features to ``outputs``
    objectives in standardised units; the members run as one batched matrix product per layer."""

    def __init__(self, inputs: int, outputs: int = 1, hidden: int = 32, members: int = 3) -> None:
        super().__init__()
        self.outputs = outputs
        sizes = [inputs, hidden, hidden, outputs]
        self.weights = nn.ParameterList(_init_weight(members, a, b) for a, b in zip(sizes, sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(members, 1, b)) for b in sizes[1:])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Every member's predictions: shape (members, rows, outputs)."""
        h = features.expand(len(self.weights[0]), *features.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation per row and objective (standardised units)."""
        out = self(features)
        return out.mean(dim=0).numpy(), out.std(dim=0, unbiased=False).numpy()


def _init_weight(members: int, fan_in: int, fan_out: int) -> nn.Parameter:
    """Weights of one layer for every member, drawn as ``nn.Linear`` draws them (uniform in +-1/sqrt(fan_in))."""
    bound = 1.0 / fan_in ** 0.5
    return nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound))


@dataclass
class JointFit:
    """How generator and surrogate are trained together on the queried set."""

    steps: int = 75  # full-batch Adam steps (the queried set is at most a few hundred rows)
    lr: float = 4e-3
    kl_weight: float = 0.05  # as in pre-training: keeps the latent codes near the prior that generation draws from
    surrogate_weight: float = 1.0  # weight of the prediction loss beside the reconstruction loss
    reads: str = "encoding"  # what the surrogate reads: "encoding" (the vector) or "latent" (the encoder's mean)


def features(vae: ArchitectureVAE, x: torch.Tensor, reads: str) -> torch.Tensor:
    """The surrogate's input for vectors ``x``: the vectors themselves, or their latent means."""
    if reads == "encoding":
        return x
    if reads == "latent":
        return vae.encode(x)[0]
    raise ValueError(f"a surrogate reads 'encoding' or 'latent', not {reads!r}")


def feature_size(vae: ArchitectureVAE, reads: str) -> int:
    """Width of the surrogate's input."""
    return vae.encoding.size if reads == "encoding" else vae.latent


def fit_jointly(vae: ArchitectureVAE, surrogate: Surrogate, x: np.ndarray, targets: np.ndarray,
                weights: np.ndarray, fit: JointFit, seed: int) -> float:
    """Train the VAE (weighted reconstruction) and the surrogate (weighted squared error) together on the queried
    rows ``x`` with standardised ``targets``; returns the final weighted loss."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(targets, dtype=np.float32)).reshape(len(xt), -1)
    wt = torch.from_numpy(np.asarray(weights, dtype=np.float32))
    wt = wt / wt.mean()
    optimiser = torch.optim.Adam([*vae.parameters(), *surrogate.parameters()], lr=fit.lr, fused=True)
    vae.train()
    surrogate.train()
    loss = torch.zeros(())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(fit.steps):
            reconstruction, mu = vae.losses(xt, fit.kl_weight)
            error = (surrogate(xt if fit.reads == "encoding" else mu) - yt).pow(2).mean(dim=(0, 2))
            loss = (wt * (reconstruction + fit.surrogate_weight * error)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    vae.eval()
    surrogate.eval()
    return float(loss.detach())


def fit_surrogate(surrogate: Surrogate, x: np.ndarray, targets: np.ndarray, steps: int = 200, lr: float = 1e-2,
                  seed: int = 0) -> float:
    """Train the surrogate alone (full-batch Adam, squared error) on vectors ``x`` and standardised ``targets``;
    returns the final loss."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(targets, dtype=np.float32)).reshape(len(xt), -1)
    optimiser = torch.optim.Adam(surrogate.parameters(), lr=lr)
    surrogate.train()
    loss = torch.zeros(())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            loss = (surrogate(xt) - yt).pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    surrogate.eval()
    return float(loss.detach())
