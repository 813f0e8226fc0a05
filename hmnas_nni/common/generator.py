"""The generative model of architectures: a small variational autoencoder over a :class:`SpaceEncoding`.

The encoder maps an architecture's vector to a Gaussian in latent space; the decoder maps a latent point to one
logit per block entry, which :meth:`SpaceEncoding.decode` turns into a valid sample. Pre-trained on random samples
of the space (free: nothing is queried), it learns to reconstruct any architecture; fine-tuned on queried
architectures with a weighted reconstruction loss, decoding points drawn from the prior ``N(0, I)`` gives
architectures like the heavily weighted ones, which is how AG-Net and NASES steer generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hmnas_nni.common.encoding import Sample, SpaceEncoding


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ArchitectureVAE(nn.Module):
    """Encoder (vector -> latent Gaussian) and decoder (latent -> per-choice logits) over one space's encoding."""

    def __init__(self, encoding: SpaceEncoding, latent: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.encoding = encoding
        self.latent = latent
        self.encoder = _mlp([encoding.size, hidden, hidden, 2 * latent])
        self.decoder = _mlp([latent, hidden, hidden, encoding.logit_size])
        self._blocks = _BlockLayout(encoding)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the latent Gaussian of each row of ``x``."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (one per block entry) of latent points ``z``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of a reparameterised draw from each row's latent Gaussian, with its mean and log-variance."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar

    def losses(self, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row loss (reconstruction + ``kl_weight`` x KL to the prior) and the latent means."""
        logits, mu, logvar = self(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        return self._blocks.reconstruction(logits, x) + kl_weight * kl, mu

    @torch.no_grad()
    def generate(self, n: int, rng: np.random.Generator, temperature: float = 1.0, sample: bool = True) -> list[Sample]:
        """``n`` valid samples decoded from the prior ``N(0, temperature^2 I)``; per-block draws when ``sample``."""
        z = torch.from_numpy(rng.standard_normal((n, self.latent)).astype(np.float32)) * temperature
        logits = self.decode(z).numpy()
        return self.encoding.decode_many(logits, rng if sample else None)

    @torch.no_grad()
    def generate_near(self, x: np.ndarray, weights: np.ndarray, n: int, rng: np.random.Generator,
                      temperature: float = 1.0, sample: bool = True) -> list[Sample]:
        """``n`` valid samples decoded from the latent Gaussians of rows of ``x`` (standard deviations scaled by
        ``temperature``), each row drawn as the anchor with probability proportional to its weight."""
        anchors = rng.choice(len(x), size=n, p=np.asarray(weights, dtype=np.float64) / np.sum(weights))
        mu, logvar = self.encode(torch.from_numpy(np.asarray(x, dtype=np.float32)[anchors]))
        noise = torch.from_numpy(rng.standard_normal((n, self.latent)).astype(np.float32))
        logits = self.decode(mu + temperature * (0.5 * logvar).exp() * noise).numpy()
        return self.encoding.decode_many(logits, rng if sample else None)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Latent means of vectors ``x`` (the architectures' places in latent space)."""
        return self.encode(x)[0]


class _BlockLayout:
    """Index tensors of an encoding's blocks, so the reconstruction loss of every block is one padded softmax."""

    def __init__(self, encoding: SpaceEncoding) -> None:
        picked = [b for b in encoding.blocks if b.n_chosen is not None]  # one value, or exactly n_chosen values
        width = max((b.size for b in picked), default=1)
        pad = encoding.logit_size  # index of a padding column appended to the logits
        self.index = torch.full((len(picked), width), pad, dtype=torch.long)
        for row, b in enumerate(picked):
            self.index[row, :b.size] = torch.arange(b.start, b.stop)
        self.n_chosen = torch.tensor([float(b.n_chosen) for b in picked])
        self.free = torch.zeros(encoding.logit_size, dtype=torch.bool)  # bits of sets of any size
        for b in encoding.blocks:
            if b.n_chosen is None:
                self.free[b.start:b.stop] = True

    def reconstruction(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-row reconstruction loss: cross-entropy of each block's chosen values (averaged over the ``n_chosen``
        of a set), plus a binary cross-entropy per bit of sets of any size."""
        n = logits.shape[0]
        loss = logits.new_zeros(n)
        if len(self.index):
            padded_logits = torch.cat([logits, logits.new_full((n, 1), -torch.inf)], dim=1)[:, self.index]
            padded_x = torch.cat([x[:, :logits.shape[1]], x.new_zeros(n, 1)], dim=1)[:, self.index]
            log_p = F.log_softmax(padded_logits, dim=-1).masked_fill(padded_x == 0, 0.0)
            loss = loss - (log_p * padded_x).sum(dim=-1).div(self.n_chosen).sum(dim=-1)
        if self.free.any():
            bits = F.binary_cross_entropy_with_logits(logits[:, self.free], x[:, :len(self.free)][:, self.free],
                                                      reduction="none")
            loss = loss + bits.sum(dim=-1)
        return loss


def pretrain(model: ArchitectureVAE, samples: list[Sample], *, epochs: int = 20, batch_size: int = 128,
             lr: float = 3e-3, kl_weight: float = 0.05, seed: int = 0) -> list[float]:
    """Train the VAE to reconstruct random samples of its space (no query spent); returns the mean loss per epoch."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(model.encoding.encode_many(samples))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    history = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            total = 0.0
            for batch in torch.randperm(len(x), generator=generator).split(batch_size):
                loss = model.losses(x[batch], kl_weight)[0].mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / len(x))
    model.eval()
    return history


def pretrained_vae(encoding: SpaceEncoding, *, samples: int, seed: int, latent: int = 16, hidden: int = 64,
                   epochs: int = 20, kl_weight: float = 0.05) -> tuple[ArchitectureVAE, list[float]]:
    """A VAE over ``encoding`` (weights seeded by ``seed``) pre-trained on ``samples`` seeded random samples of the
    space, with its loss per epoch (none when ``samples`` is 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = ArchitectureVAE(encoding, latent, hidden)
    if not samples:
        return vae.eval(), []
    drawn = encoding.random_samples(samples, np.random.default_rng([seed, 2]))
    return vae, pretrain(vae, drawn, epochs=epochs, kl_weight=kl_weight, seed=seed)
