"""InstaNAS on HM-NAS: a controller that picks, per input image, one member of a search's nested family.

The members are the nested networks ``hmnas search --family K`` writes: each is cut out of the supernet with
inherited weights and no gap, and each has a latency measured in ONNX Runtime. :class:`InstaNAS` alternates

- **policy updates**: the controller (a tiny CNN on a downsampled image) samples a member per image of the
  search's architecture half, and REINFORCE with a moving-average baseline and an entropy bonus follows the
  reward ``R = correct * (1 - latency_weight * ms / ms_max) - (1 - correct) * penalty``;
- **shared-weight fine-tuning**: on the weight half, each image runs the supernet masked as the member the
  controller samples for it (the batch grouped by member, :func:`member_state`), then the members are cut out
  again (BatchNorm statistics re-estimated per member).

From Python (arguments, not flags)::

    family = load_searched_family("runs/nb201-family")
    insta = InstaNAS(family, latency_weight=0.5, seed=0)
    insta.train(epochs=3)
    choices = insta.choose(images)            # member index per image
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from hmnas_nni.format.errors import UsageError
from hmnas_nni.nas.cost import LatencyModel
from hmnas_nni.nas.family import FamilyMember, family_members, member_state
from hmnas_nni.nas.levels import all_on
from hmnas_nni.nas.rebuild import derived_of, is_architecture_key

from .config import SearchConfig
from .evaluation import recalibrate_batchnorm
from .inputs import SearchInputs, search_inputs
from .resume import read_checkpoint, saved_config
from .strategies import make_strategy

#: Prefix of the supernet's weights in a search's Lightning checkpoint.
SUPERNET_PREFIX = "training_module._model."


# --------------------------------------------------------------------------- the searched family
@dataclass
class SearchedFamily:
    """A finished HM-NAS search restored: its config, data halves, supernet, hierarchy and nested members (largest
    first) with the latency each was measured at (ONNX Runtime, batch 1, from ``family/family.json``)."""

    folder: Path
    config: SearchConfig
    inputs: SearchInputs
    supernet: nn.Module
    hierarchy: Any
    members: list[FamilyMember]
    latency_ms: list[float]

    @property
    def input_shape(self) -> list[int]:
        """(C, H, W) of the images the members take."""
        return list(self.inputs.space.hmnas_input_shape)


def load_searched_family(folder: str | Path, data_root: str | None = None) -> SearchedFamily:
    """Restore the supernet (weights, mask scores, traced dataflow) of an ``hmnas search --family K`` folder and
    re-derive its members, checked against the ones the search wrote."""
    folder = Path(folder)
    doc, ckpt = _search_files(folder)
    values = saved_config(ckpt, folder / "checkpoints" / "last.ckpt")
    if values.get("strategy") != "hmnas":
        raise UsageError(f"--search {folder}: a search of --strategy {values.get('strategy')}; InstaNAS needs an "
                         "HM-NAS search (--strategy hmnas --family K)")
    if data_root is not None:
        values["data_root"] = data_root
    config = SearchConfig.from_dict(values)
    inputs = search_inputs(config)
    strategy = make_strategy(config)
    supernet = strategy.mutate_model(inputs.space)
    state = {k[len(SUPERNET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(SUPERNET_PREFIX)}
    supernet.load_state_dict(state)
    strategy.hierarchy.load_state(ckpt.get("hmnas_dataflow"))
    supernet.eval()
    with all_on(strategy.hierarchy), torch.no_grad():  # every edge runs once: derivation reads its output shape
        supernet(inputs.val.tensors[0][:2])
    rows = doc["members"]
    # the family is chosen as the search chose it: by predicted latency where it had a table
    cost = LatencyModel.of(supernet, strategy.hierarchy, strategy.latency.table) if strategy.latency else None
    members = family_members(supernet, strategy.hierarchy, len(rows), cost, list(inputs.space.hmnas_input_shape))
    if [m.kept for m in members] != [r["kept"] for r in rows]:
        raise UsageError(f"--search {folder}: its checkpoint does not give the family in family/family.json (the "
                         "folder was changed after the search); run the search again")
    return SearchedFamily(folder, config, inputs, supernet, strategy.hierarchy, members, _latencies(folder, rows))


def _search_files(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``family/family.json`` and the last checkpoint of a search folder, or a one-line error naming what is
    missing."""
    if not folder.is_dir():
        raise UsageError(f"--search {folder}: no such folder; pass the --out folder of `hmnas search --family K`")
    family, ckpt = folder / "family" / "family.json", folder / "checkpoints" / "last.ckpt"
    if not ckpt.is_file() or not (folder / "supernet.safetensors").is_file():
        raise UsageError(f"--search {folder}: no finished search there (checkpoints/last.ckpt or "
                         "supernet.safetensors missing); run `hmnas search --family K --out DIR` first")
    if not family.is_file():
        raise UsageError(f"--search {folder}: the search wrote no family (family/family.json); run it with "
                         "--family K (K >= 2)")
    try:
        doc = json.loads(family.read_text())
        rows = doc["members"]
        assert isinstance(rows, list) and all("kept" in r for r in rows)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UsageError(f"{family} is not a family file of `hmnas search --family K`") from None
    if len(rows) < 2:
        raise UsageError(f"--search {folder}: its family has {len(rows)} member; a per-image choice needs at "
                         "least 2 (search with --family K, K >= 2)")
    return doc, read_checkpoint(ckpt)


def _latencies(folder: Path, rows: list[dict[str, Any]]) -> list[float]:
    """Each member's measured ONNX Runtime latency (ms), or a one-line error when the family was not measured."""
    ms = [r.get("measured_ms") for r in rows]
    if any(not isinstance(v, (int, float)) or not v > 0 for v in ms):
        raise UsageError(f"--search {folder}: family/family.json holds no measured latency for every member")
    return [float(v) for v in ms]


# --------------------------------------------------------------------------- the controller
class Controller(nn.Module):
    """A tiny CNN over the image average-pooled to ``size`` x ``size``: logits over ``members``."""

    def __init__(self, in_channels: int, members: int, size: int = 8, width: int = 8) -> None:
        super().__init__()
        self.size = size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over members, one row per image."""
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        return self.head(self.features(x))


def reward(correct: torch.Tensor, ms: torch.Tensor, ms_max: float, latency_weight: float,
           penalty: float) -> torch.Tensor:
    """InstaNAS's reward: a correct answer earns ``1 - latency_weight * ms / ms_max`` (less for a slower member), a
    wrong one costs ``penalty`` whatever the member."""
    correct = correct.float()
    return correct * (1 - latency_weight * ms / ms_max) - (1 - correct) * penalty


# --------------------------------------------------------------------------- training
@dataclass
class InstaNASSettings:
    """How InstaNAS trains (every field an argument of :class:`InstaNAS`)."""

    latency_weight: float = 0.5
    penalty: float = 1.0
    entropy: float = 0.1
    baseline_decay: float = 0.9
    controller_lr: float = 3e-3
    finetune_lr: float = 5e-4
    policy_passes: int = 10
    batch_size: int = 64
    controller_size: int | None = None
    seed: int = 0
    bn_batches: int = 10

    def validate(self) -> InstaNASSettings:
        """Refuse values that make no sense, one line each."""
        if not 0 <= self.latency_weight <= 1:
            raise UsageError(f"latency_weight (--latency-weight) {self.latency_weight!r} is outside [0, 1]: 0 "
                             "ignores latency, 1 gives a correct answer of the slowest member no reward")
        for name in ("penalty", "entropy", "finetune_lr"):
            if not 0 <= getattr(self, name) < math.inf:
                raise UsageError(f"{name} must be finite and >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.baseline_decay < 1 or not self.controller_lr > 0:
            raise UsageError("baseline_decay must be in [0, 1) and controller_lr > 0")
        if self.policy_passes < 1 or self.batch_size < 1 or self.bn_batches < 1:
            raise UsageError("policy_passes, batch_size and bn_batches must be >= 1")
        if self.controller_size is not None and self.controller_size < 1:
            raise UsageError(f"controller_size (--controller-size) {self.controller_size!r}: pass a side >= 1")
        return self


class InstaNAS:
    """Instance-aware choice of a family member per image, trained by policy gradient (see the module docstring)."""

    def __init__(self, family: SearchedFamily, **settings: Any) -> None:
        self.family = family
        self.settings = InstaNASSettings(**settings).validate()
        torch.manual_seed(self.settings.seed)
        self.generator = torch.Generator().manual_seed(self.settings.seed)
        k = len(family.members)
        side = family.input_shape[-1]
        self.size = self.settings.controller_size or max(d for d in range(1, min(8, side) + 1) if side % d == 0)
        self.controller = Controller(family.input_shape[0], k, self.size)
        self.controller_opt = torch.optim.Adam(self.controller.parameters(), lr=self.settings.controller_lr)
        weights = [p for n, p in family.supernet.named_parameters() if not is_architecture_key(n)]
        self.finetune_opt = torch.optim.Adam(weights, lr=self.settings.finetune_lr)
        self.ms = torch.tensor(family.latency_ms)
        self.baseline = 0.0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.nets = self.derive_members()

    # -- members
    def derive_members(self) -> list[nn.Module]:
        """Every member cut out of the supernet as it is now, BatchNorm re-estimated on the weight half."""
        self.family.supernet.eval()
        nets = []
        for m in self.family.members:
            net = copy.deepcopy(derived_of(self.family.supernet, m.architecture))
            nets.append(recalibrate_batchnorm(net, self.family.inputs.train, batches=self.settings.bn_batches))
        return nets

    @torch.no_grad()
    def correct_table(self, data: TensorDataset) -> torch.Tensor:
        """(images, members): whether each member classifies each image right."""
        x, y = data.tensors
        return torch.stack([_predict(net, x) == y for net in self.nets], dim=1)

    # -- the two phases
    def policy_pass(self, x: torch.Tensor, table: torch.Tensor) -> dict[str, float]:
        """One pass of REINFORCE over (``x``, its correctness ``table``): mean reward and entropy."""
        s = self.settings
        self.controller.train()
        order = torch.randperm(len(x), generator=self.generator)
        rewards, entropies = [], []
        for idx in order.split(s.batch_size):
            dist = torch.distributions.Categorical(logits=self.controller(x[idx]))
            pick = torch.multinomial(dist.probs.detach(), 1, generator=self.generator).squeeze(1)
            r = reward(table[idx, pick], self.ms[pick], float(self.ms.max()), s.latency_weight, s.penalty)
            advantage = r - self.baseline
            loss = -(advantage * dist.log_prob(pick)).mean() - s.entropy * dist.entropy().mean()
            self.controller_opt.zero_grad()
            loss.backward()
            self.controller_opt.step()
            self.baseline = s.baseline_decay * self.baseline + (1 - s.baseline_decay) * float(r.mean())
            rewards.append(float(r.mean()))
            entropies.append(float(dist.entropy().mean().detach()))
        return {"reward": sum(rewards) / len(rewards), "entropy": sum(entropies) / len(entropies)}

    def finetune_pass(self, data: TensorDataset) -> float:
        """One pass over ``data`` training the shared weights, each image under the member sampled for it; the mean
        loss. Batches are grouped by member: one masked forward per member present."""
        supernet, hierarchy = self.family.supernet, self.family.hierarchy
        losses = []
        for x, y in DataLoader(data, batch_size=self.settings.batch_size, shuffle=True,
                               generator=self.generator):
            pick = self.sample(x)
            supernet.train()
            self.finetune_opt.zero_grad()
            loss = torch.zeros(())
            for k in pick.unique().tolist():
                rows = pick == k
                with member_state(hierarchy, self.family.members[k]):
                    loss = loss + F.cross_entropy(supernet(x[rows]), y[rows], reduction="sum") / len(y)
            loss.backward()
            self.finetune_opt.step()
            losses.append(float(loss.detach()))
        supernet.eval()
        return sum(losses) / max(1, len(losses))

    # -- the schedule
    def train_epoch(self) -> dict[str, Any]:
        """Fine-tune the shared weights under sampled policies (if ``finetune_lr`` > 0), cut the members out again,
        then ``policy_passes`` passes of policy updates on the architecture half; the epoch's record."""
        row: dict[str, Any] = {"epoch": self.epoch}
        if self.settings.finetune_lr > 0:
            row["finetune_loss"] = self.finetune_pass(self.family.inputs.train)
            self.nets = self.derive_members()
        val = self.family.inputs.val
        table = self.correct_table(val)
        x = F.adaptive_avg_pool2d(val.tensors[0], self.size)
        for _ in range(self.settings.policy_passes):
            row.update(self.policy_pass(x, table))
        row["member_val_acc"] = table.float().mean(0).tolist()
        row.update(self.evaluate(val, table))
        self.history.append(row)
        self.epoch += 1
        return row

    def train(self, epochs: int, on_epoch: Any = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are done (counting those a restored state already did)."""
        while self.epoch < epochs:
            row = self.train_epoch()
            if on_epoch is not None:
                on_epoch(row, self)
        return self.history

    # -- using it
    @torch.no_grad()
    def choose(self, x: torch.Tensor) -> torch.Tensor:
        """The member the controller picks for each image (its most likely one)."""
        self.controller.eval()
        return self.controller(x).argmax(1)

    @torch.no_grad()
    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """A member per image drawn from the controller's policy."""
        self.controller.eval()
        probs = F.softmax(self.controller(x), dim=1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    @torch.no_grad()
    def evaluate(self, data: TensorDataset, table: torch.Tensor | None = None) -> dict[str, Any]:
        """Accuracy and mean predicted latency (members' measured ms) of the greedy choice over ``data``."""
        table = self.correct_table(data) if table is None else table
        pick = self.choose(data.tensors[0])
        counts = torch.bincount(pick, minlength=len(self.nets))
        return {"val_acc": float(table[torch.arange(len(pick)), pick].float().mean()),
                "val_mean_ms": float(self.ms[pick].mean()), "choice_counts": counts.tolist()}

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values only: loadable with ``weights_only``)."""
        supernet = {k: v for k, v in self.family.supernet.state_dict().items() if not is_architecture_key(k)}
        return {"epoch": self.epoch, "baseline": self.baseline, "history": json.dumps(self.history),
                "settings": json.dumps(asdict(self.settings)),
                "controller": self.controller.state_dict(), "controller_opt": self.controller_opt.state_dict(),
                "finetune_opt": self.finetune_opt.state_dict(), "supernet": supernet,
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a run with the same settings."""
        saved = json.loads(state["settings"])
        diffs = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in asdict(self.settings).items() if saved.get(k) != v]
        if diffs:
            raise UsageError(f"--resume: that run used {', '.join(diffs)}; pass the same options")
        self.family.supernet.load_state_dict(state["supernet"], strict=False)
        self.controller.load_state_dict(state["controller"])
        self.controller_opt.load_state_dict(state["controller_opt"])
        self.finetune_opt.load_state_dict(state["finetune_opt"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.baseline = int(state["epoch"]), float(state["baseline"])
        self.history = json.loads(state["history"])
        self.nets = self.derive_members()


@torch.no_grad()
def _predict(net: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of every image."""
    return torch.cat([net.eval()(chunk).argmax(1) for chunk in x.split(batch_size)])
