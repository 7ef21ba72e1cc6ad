"""The optimizer: which parameters go in which group, and how the schedule moves each group.

`train.optimizer = "adamw"` is GPT-2's recipe: one AdamW, matrices decayed, gains and biases not.
`"muon"` is the modern small-GPT recipe (modded-nanogpt, nanochat): torch's Muon for the hidden
2-D matrices of the blocks, whose updates it orthogonalises so every direction of a matrix learns
at the same rate, and AdamW for what Muon is wrong for — the token table (a lookup, not a linear
map), the output layer, and 1-D gains and biases. Each group has its own learning rate and weight
decay; the schedule scales all of them by the same factor, so `lr_at` stays the one schedule.

Under DDP every rank holds whole, all-reduced gradients and runs the same Muon step. Under FSDP2
a matrix is a DTensor cut by rows; Newton-Schulz needs the whole matrix, so `MuonAdamW` gathers
each sharded gradient, orthogonalises it (every rank the same matrix) and keeps its own rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor, distribute_tensor

from engine.config import TrainConfig
from engine.schedule import lr_at

MOMENTUM_START = 0.85  # Muon's momentum at step 0 when it warms up (modded-nanogpt, nanochat)


def param_groups(model: nn.Module, t: TrainConfig) -> list[dict[str, Any]]:
    """The parameter groups of `t.optimizer`, each named ("name") so the schedule can find it."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if t.optimizer == "adamw":
        # shrinking norm gains and biases towards zero only hurts, so only matrices decay
        return [
            _group("decay", [p for _, p in named if p.dim() >= 2], t.lr, t.weight_decay),
            _group("no_decay", [p for _, p in named if p.dim() < 2], t.lr, 0.0),
        ]
    # named_parameters lists a tied matrix once, as wte: it is then also the output layer,
    # and the head's small rate suits both of its uses
    tied = bool(getattr(getattr(model, "cfg", None), "tie_embeddings", False))
    kinds: dict[str, list[torch.Tensor]] = {"matrix": [], "embedding": [], "head": [], "gain": []}
    for name, p in named:
        if p.dim() < 2:
            kinds["gain"].append(p)
        elif name.startswith("blocks."):
            kinds["matrix"].append(p)
        elif name.startswith("lm_head.") or (name == "wte.weight" and tied):
            kinds["head"].append(p)
        else:
            kinds["embedding"].append(p)
    groups = [
        _group("matrix", kinds["matrix"], t.matrix_lr, t.matrix_weight_decay),
        _group("embedding", kinds["embedding"], t.embedding_lr, t.embedding_weight_decay),
        _group("head", kinds["head"], t.head_lr, t.head_weight_decay),
        _group("gain", kinds["gain"], t.lr, 0.0),
    ]
    return [g for g in groups if g["params"]]


def _group(name: str, params: list[torch.Tensor], lr: float, weight_decay: float) -> dict:
    return {"name": name, "params": params, "lr": lr, "base_lr": lr, "weight_decay": weight_decay}


def build(model: nn.Module, t: TrainConfig, fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimizer `t` asks for over `model`'s parameters (after any FSDP sharding).

    `fused` (one AdamW kernel for all parameters) defaults to on when the weights are on CUDA.
    """
    groups = param_groups(model, t)
    betas = (t.beta1, t.beta2)
    if fused is None:
        fused = any(p.is_cuda for g in groups for p in g["params"])
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=betas, fused=fused)
    return MuonAdamW(groups, betas=betas, momentum=t.muon_momentum, fused=fused)


def set_step(optimizer: torch.optim.Optimizer, step: int, t: TrainConfig) -> float:
    """Move every group to its value at `step`: each learning rate is its base rate times the
    schedule's factor, and Muon's momentum warms up. Returns the schedule's lr (train.lr's)."""
    lr = lr_at(step, t)
    scale = lr / t.lr
    momentum = muon_momentum_at(step, t)
    for group in optimizer.param_groups:
        group["lr"] = group.get("base_lr", t.lr) * scale
        if group.get("name") == "matrix":
            group["momentum"] = momentum
    return lr


def muon_momentum_at(step: int, t: TrainConfig) -> float:
    """Low momentum while the first, large gradients arrive, then `t.muon_momentum`."""
    if step >= t.muon_momentum_warmup:
        return t.muon_momentum
    start = min(MOMENTUM_START, t.muon_momentum)
    return start + (t.muon_momentum - start) * step / t.muon_momentum_warmup


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups named "matrix", AdamW for the others, as one optimizer.

    One object, so the trainer, the gradient scaler, checkpoints and torch.distributed.checkpoint
    see a single ordinary optimizer: its `param_groups` and `state` are those of the two inner
    optimizers, shared, not copied.
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        betas: tuple[float, float],
        momentum: float,
        fused: bool = False,
    ) -> None:
        groups = list(groups)
        muon = [g for g in groups if g["name"] == "matrix"]
        adam = [g for g in groups if g["name"] != "matrix"]
        self._muon = (
            torch.optim.Muon(muon, momentum=momentum, adjust_lr_fn="original") if muon else None
        )
        self._adam = torch.optim.AdamW(adam, betas=betas, fused=fused) if adam else None
        super().__init__(muon + adam, {})
        self._share()

    def _share(self) -> None:
        n = len(self._muon.param_groups) if self._muon else 0
        if self._muon:
            self._muon.param_groups, self._muon.state = self.param_groups[:n], self.state
        if self._adam:
            self._adam.param_groups, self._adam.state = self.param_groups[n:], self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()  # loading replaced our group dicts and state with new ones

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._muon:
            if any(isinstance(p, DTensor) for g in self._muon.param_groups for p in g["params"]):
                self._gathered_muon_step()
            else:
                self._muon.step()
        if self._adam:
            self._adam.step()
        return loss

    def _gathered_muon_step(self) -> None:
        """Muon on FSDP-sharded matrices: each rank gathers the whole gradient and momentum,
        takes the same step a single process takes, and keeps its own rows.

        Newton-Schulz is a function of the whole matrix: run on row shards (or through DTensor's
        sharded matmuls, whose bf16 sums run in another order) it would not match one process.
        """
        for group in self._muon.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)  # sharded like p
                whole = nn.Parameter(p.full_tensor())
                whole.grad = p.grad.full_tensor()
                step = torch.optim.Muon([{"params": [whole], **hyper}])
                step.state[whole]["momentum_buffer"] = state["momentum_buffer"].full_tensor()
                step.step()
                _keep_own_rows(p, whole.detach())
                _keep_own_rows(state["momentum_buffer"], step.state[whole]["momentum_buffer"])


def _keep_own_rows(shard: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy this rank's piece of `whole` into the DTensor `shard`, in place."""
    mine = distribute_tensor(whole, shard.device_mesh, shard.placements).to_local()
    shard.to_local().copy_(mine)
