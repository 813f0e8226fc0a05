"""NNI 3.0's RandomOneShot, made reproducible by a seed.

NNI's path-sampling supermodules draw every training path, and the exported architecture, with
``nni.mutable``'s ``random()`` and no ``random_state``, which builds an unseeded ``numpy.random.RandomState``:
two runs of one seed train other paths and export other networks. Every supermodule takes a choice already in
the ``memo`` it is handed, so :class:`SeededRandomSampling` draws the whole sample first from its own
``RandomState(seed)`` and hands it down; the sampling itself (uniform, NNI's ``filter``) is NNI's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from nni.mutable import Sample
from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule
from nni.nas.oneshot.pytorch.strategy import RandomOneShot
from numpy.random import RandomState
from pytorch_lightning import LightningModule

#: Where a checkpoint keeps the sampler's state (so ``--resume`` draws the paths an unbroken run would).
CHECKPOINT_KEY = "hmnas_random_state"


class SeededRandomSampling(RandomSamplingLightningModule):
    """NNI's uniform path sampling, every draw from one ``RandomState(seed)``."""

    def __init__(self, training_module: LightningModule, filter: Callable[[Sample], bool] | None = None,  # noqa: A002
                 seed: int | None = None) -> None:
        super().__init__(training_module, filter)
        self.random_state = RandomState(seed)

    def draw(self) -> Sample:
        """One value for every choice the supernet holds, in the supernet's module order."""
        sample: Sample = {}
        for module in self.supernet_modules():
            for label, mutable in module.simplify().items():
                if label not in sample:
                    sample[label] = mutable.random(random_state=self.random_state)
        return sample

    def _sample_path(self) -> Sample:
        """Draw a sample and set every supermodule's path to it (NNI's resample, with the memo filled first)."""
        sample = self.draw()
        for module in self.supernet_modules():
            sample.update(module.resample(memo=sample))
        return sample

    def resample(self) -> Sample:
        return self._repeat_until_valid(self._sample_path)

    def export(self) -> Sample:
        """A seeded random architecture, as NNI's RandomOneShot exports (a random one, with its warning)."""
        warnings.warn("Direct export from RandomOneShot returns an arbitrary architecture.", UserWarning, stacklevel=2)
        return self._repeat_until_valid(self.draw)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the sampler's state in the checkpoint."""
        checkpoint[CHECKPOINT_KEY] = self.random_state.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The sampler's state a checkpoint kept (none in one written by NNI's unseeded RandomOneShot)."""
        if CHECKPOINT_KEY in checkpoint:
            self.random_state.set_state(checkpoint[CHECKPOINT_KEY])


class SeededRandomOneShot(RandomOneShot):
    """NNI's RandomOneShot whose training paths and export come from ``seed`` (None: fresh entropy, as NNI's)."""

    def __init__(self, filter: Any = None, seed: int | None = None, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(filter=filter, **kwargs)
        self.seed = seed

    def configure_oneshot_module(self, training_module: LightningModule) -> SeededRandomSampling:
        return SeededRandomSampling(training_module, self.filter, self.seed)
