"""NNI 3.0's RandomOneShot, made reproducible by a seed.

NNI's path-sampling supermodules draw every training path, and the exported architecture, with
``nni.mutable``'s ``random()`` and no ``random_state``, which builds an unseeded ``numpy.random.RandomState``:
two runs of one seed train other paths and export other networks. Every supermodule takes a choice already in
the ``memo`` it is handed, so :class:`SeededRandomSampling` draws the whole sample first and hands it down; the
sampling itself (uniform, NNI's ``filter``) is NNI's. Each draw has its own generator, seeded by the search's seed
and the step it serves (training or validation, epoch, batch), so a resumed search, and every DDP rank, draws
what an unbroken single-process search draws, whatever else ran in between (Lightning's sanity check).
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

#: The first word of a draw's key after the seed: which kind of step it serves.
TRAIN, VALIDATION, EXPORT = 0, 1, 2


class SeededRandomSampling(RandomSamplingLightningModule):
    """NNI's uniform path sampling, each draw from ``RandomState([seed, step kind, epoch, batch])``."""

    def __init__(self, training_module: LightningModule, filter: Callable[[Sample], bool] | None = None,  # noqa: A002
                 seed: int | None = None) -> None:
        super().__init__(training_module, filter)
        self.seed = seed
        self.draw_key: tuple[int, ...] = (EXPORT,)

    def generator(self) -> RandomState:
        """The generator of the draw for :attr:`draw_key` (fresh entropy, as NNI's, when there is no seed)."""
        return RandomState() if self.seed is None else RandomState([self.seed, *self.draw_key])

    def draw(self, random_state: RandomState) -> Sample:
        """One value for every choice the supernet holds, in the supernet's module order."""
        sample: Sample = {}
        for module in self.supernet_modules():
            for label, mutable in module.simplify().items():
                if label not in sample:
                    sample[label] = mutable.random(random_state=random_state)
        return sample

    def _sample_path(self, random_state: RandomState) -> Sample:
        """Draw a sample and set every supermodule's path to it (NNI's resample, with the memo filled first)."""
        sample = self.draw(random_state)
        for module in self.supernet_modules():
            sample.update(module.resample(memo=sample))
        return sample

    def resample(self) -> Sample:
        random_state = self.generator()
        return self._repeat_until_valid(lambda: self._sample_path(random_state))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.draw_key = (TRAIN, self.current_epoch, batch_idx)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self.draw_key = (VALIDATION, self.current_epoch, batch_idx)
        return super().validation_step(batch, batch_idx)

    def export(self) -> Sample:
        """A seeded random architecture, as NNI's RandomOneShot exports (a random one, with its warning)."""
        warnings.warn("Direct export from RandomOneShot returns an arbitrary architecture.", UserWarning, stacklevel=2)
        self.draw_key = (EXPORT,)
        random_state = self.generator()
        return self._repeat_until_valid(lambda: self.draw(random_state))


class SeededRandomOneShot(RandomOneShot):
    """NNI's RandomOneShot whose training paths and export come from ``seed`` (None: fresh entropy, as NNI's)."""

    def __init__(self, filter: Any = None, seed: int | None = None, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(filter=filter, **kwargs)
        self.seed = seed

    def configure_oneshot_module(self, training_module: LightningModule) -> SeededRandomSampling:
        return SeededRandomSampling(training_module, self.filter, self.seed)
