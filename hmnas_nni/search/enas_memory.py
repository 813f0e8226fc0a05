"""ENAS whose controller also learns from a memory of the architectures it sampled before (``--strategy enas-memory``).

Adam & Lorraine (2019, "Understanding Neural Architecture Search Techniques") found ENAS no better than random
sampling with weight sharing, and traced it to a controller whose hidden state does not encode its past choices;
training the controller also on a memory buffer of previously sampled architectures made its hidden states track
graph similarity. Here NNI 3.0's ENAS keeps its own controller step (PPO on freshly sampled architectures, every
``batches_per_update`` rewards) and :class:`MemoryEnasModule` adds a replay step after every ``replay_every``-th
reward:

- the memory holds the last ``memory_buffer`` architectures the controller was rewarded for (their choice
  indices) with their rewards (NNI's reward: the validation accuracy of that path of the supernet on one batch);
- the replay loss is REINFORCE on the memory's ``replay_top`` best architectures, with the memory's mean reward
  as baseline and advantages scaled by its standard deviation and clipped at zero:
  ``L = -1/k * sum_i max(0, (r_i - mean r) / std r) * log p(a_i)``, ``log p`` under the controller now.

Why this loss: the replayed architectures are old samples, so a REINFORCE term that also pushed down the
below-average ones would lower their probability without bound (the gradient of ``log p`` of an unlikely choice
does not vanish), while raising the probability of the above-average ones saturates as it nears one; this is
self-imitation (Oh et al., 2018) with the memory as the replay set. Reproducing whole good architectures choice
after choice makes each step's distribution depend on the choices before it, which is what the hidden state is
asked to encode. The replay has its own Adam optimizer (``replay_lr``) over the actor's parameters (the LSTM it
shares with PPO's critic included), since NNI's PPO optimizer keeps its moments for PPO's own loss.
``memory_buffer`` 0 or None is NNI's ENAS unchanged (:class:`MemoryENAS` then builds NNI's own module).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from nni.nas.oneshot.pytorch.sampling import EnasLightningModule

from .controller import actor_of, as_tensor, log_probs
from .nni_enas import LightningENAS

#: Where a checkpoint keeps the memory (so ``--resume`` continues with the architectures seen so far).
CHECKPOINT_KEY = "hmnas.enas_memory"


class ArchitectureMemory:
    """The last ``size`` architectures the controller was rewarded for, as (choice indices, reward)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: deque[tuple[tuple[int, ...], float]] = deque(maxlen=size)
        self.added = 0  # rewards seen in all, including those the memory has since dropped

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, actions: Sequence[int], reward: float) -> None:
        """Remember one architecture and its reward (the oldest is dropped once the memory is full)."""
        self.entries.append((tuple(int(a) for a in actions), float(reward)))
        self.added += 1

    def best(self, k: int) -> list[tuple[tuple[int, ...], float]]:
        """The ``k`` entries of highest reward (the most recent first among equal rewards)."""
        ranked = sorted(enumerate(self.entries), key=lambda e: (-e[1][1], -e[0]))
        return [entry for _, entry in ranked[:k]]

    def baseline(self) -> tuple[float, float]:
        """Mean and standard deviation of the rewards held."""
        rewards = [r for _, r in self.entries]
        mean = sum(rewards) / len(rewards)
        return mean, math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))

    def state_dict(self) -> dict[str, Any]:
        """The entries as tensors (what ``torch.load(weights_only=True)`` reads back)."""
        return {"actions": torch.tensor([a for a, _ in self.entries], dtype=torch.long),
                "rewards": torch.tensor([r for _, r in self.entries], dtype=torch.float64),
                "added": torch.tensor(self.added)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the entries with those of :meth:`state_dict`."""
        self.entries.clear()
        for actions, reward in zip(state["actions"].tolist(), state["rewards"].tolist()):
            self.entries.append((tuple(actions), reward))
        self.added = int(state["added"])


class RememberingGenerator:
    """NNI's trajectory generator, also putting every rewarded architecture into an :class:`ArchitectureMemory`."""

    def __init__(self, generator: Any, memory: ArchitectureMemory) -> None:
        self.generator, self.memory = generator, memory

    def __getattr__(self, name: str) -> Any:
        if name in ("generator", "memory"):  # not yet set (a copy being built): never look them up in themselves
            raise AttributeError(name)
        return getattr(self.generator, name)  # everything else is NNI's generator's

    def send_reward(self, reward: float) -> Any:
        """NNI's trajectory of the sample just rewarded; its actions (choice indices, in step order) are remembered."""
        trajectory = self.generator.send_reward(reward)
        self.memory.add(trajectory.act.tolist(), reward)
        return trajectory


class MemoryEnasModule(EnasLightningModule):
    """NNI's ENAS Lightning module with a replay step on the architecture memory after its own controller step."""

    def __init__(self, training_module: Any, *, memory_buffer: int, replay_top: int, replay_lr: float,
                 replay_every: int, **enas_options: Any) -> None:
        super().__init__(training_module, **enas_options)
        self.memory = ArchitectureMemory(memory_buffer)
        self.replay_top, self.replay_lr, self.replay_every = replay_top, replay_lr, replay_every
        self.replay_steps = 0
        self.last_replay: dict[str, float] = {}
        self._replay_optimizer: torch.optim.Optimizer | None = None

    def set_model(self, model: Any) -> None:
        """NNI's controller, with its generator remembering rewards and an optimizer for the replay loss."""
        super().set_model(model)
        self._generator = RememberingGenerator(self._generator, self.memory)
        self._replay_optimizer = torch.optim.Adam(actor_of(self.policy).parameters(), lr=self.replay_lr)

    def training_step(self, batch_packed: Any, batch_idx: int) -> Any:
        """NNI's step (weights, reward, PPO); then a replay step when this step rewarded the ``replay_every``-th."""
        seen = self.memory.added
        output = super().training_step(batch_packed, batch_idx)
        if self.memory.added > seen and self.memory.added % self.replay_every == 0 and self.replay_step():
            self.log("controller/replay_loss", self.last_replay["loss"], on_step=True, on_epoch=False)
        return output

    def replay_loss(self) -> torch.Tensor | None:
        """The replay loss on the memory's best architectures (module docstring); None while it has no signal."""
        if len(self.memory) < 2:
            return None
        mean, std = self.memory.baseline()
        best = self.memory.best(self.replay_top)
        weights = [max(0.0, (reward - mean) / std) if std > 0 else 0.0 for _, reward in best]
        if not any(weights):
            return None  # every reward alike: nothing to prefer
        actor = actor_of(self.policy)
        logp = log_probs(actor, as_tensor([a for a, _ in best], actor), self.generator.num_choices)
        return -(logp * torch.tensor(weights, dtype=logp.dtype, device=logp.device)).sum() / len(best)

    def replay_step(self) -> bool:
        """One optimizer step of the controller on :meth:`replay_loss`; whether one was taken."""
        assert self._replay_optimizer is not None, "set_model() builds the controller first"
        self.policy.train()
        with torch.enable_grad():
            loss = self.replay_loss()
            if loss is None:
                return False
            self._replay_optimizer.zero_grad()
            loss.backward()
            self._replay_optimizer.step()
        self.replay_steps += 1
        self.last_replay = {"loss": float(loss.detach()), "memory": float(len(self.memory))}
        return True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the memory in the checkpoint, so a resumed search replays the architectures seen so far."""
        checkpoint[CHECKPOINT_KEY] = {"memory": self.memory.state_dict(), "replay_steps": self.replay_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The memory a checkpoint kept (none in one written before the memory existed)."""
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is not None:
            self.memory.load_state_dict(saved["memory"])
            self.replay_steps = int(saved["replay_steps"])


class MemoryENAS(LightningENAS):
    """ENAS (the project's :class:`LightningENAS`) whose controller is also trained on a memory of past architectures.

    ``memory_buffer``: how many past architectures the memory holds (0 or None: NNI's ENAS unchanged);
    ``replay_top``: how many of the best are replayed per step (default an eighth of the memory, at least 1);
    ``replay_lr``: Adam learning rate of the replay step; ``replay_every``: rewards between replay steps.
    Every other keyword is NNI's ``ENAS``'s.
    """

    def __init__(self, *, memory_buffer: int | None, replay_top: int | None = None, replay_lr: float = 1e-3,
                 replay_every: int = 1, **enas_options: Any) -> None:
        super().__init__(**enas_options)
        if memory_buffer is not None and (not isinstance(memory_buffer, int) or memory_buffer < 0):
            raise ValueError(f"memory_buffer must be an integer >= 0 (0 or None: plain ENAS), got {memory_buffer!r}")
        self.memory_buffer = memory_buffer or 0
        self.replay_top = replay_top if replay_top is not None else max(1, self.memory_buffer // 8)
        for name, value in (("replay_top", self.replay_top), ("replay_every", replay_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(replay_lr, (int, float)) and math.isfinite(replay_lr) and replay_lr > 0):
            raise ValueError(f"replay_lr must be a finite number > 0, got {replay_lr!r}")
        self.replay_lr, self.replay_every = float(replay_lr), replay_every

    def configure_oneshot_module(self, training_module: Any) -> EnasLightningModule:
        if not self.memory_buffer:
            return super().configure_oneshot_module(training_module)  # NNI's own module: vanilla ENAS
        return MemoryEnasModule(
            training_module, memory_buffer=self.memory_buffer, replay_top=self.replay_top, replay_lr=self.replay_lr,
            replay_every=self.replay_every, batches_per_update=self.batches_per_update,
            log_prob_every_n_step=self.log_prob_every_n_step, replay_buffer_size=self.replay_buffer_size,
            reward_metric_name=self.reward_metric_name, policy_fn=self.policy_fn, update_kwargs=self.update_kwargs,
            warmup_epochs=self.warmup_epochs, penalty=self.penalty)
