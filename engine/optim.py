"""The optimizer: which parameters go in which group, and how the schedule moves each group.

`train.optimizer = "adamw"` is GPT-2's recipe: one AdamW, matrices decayed, gains and biases not.
`"muon"` is the modern small-GPT recipe (modded-nanogpt, nanochat): Muon for the hidden
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

from engine.contract.config import TrainConfig
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

    `fused` (one AdamW kernel for all parameters) defaults to on for plain tensors on CUDA or a
    CPU: on a small model the per-tensor loop of the default path is a tenth of a step.
    Sharded (DTensor) weights keep the default path.
    """
    groups = param_groups(model, t)
    betas = (t.beta1, t.beta2)
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = all(
            type(p.data) is torch.Tensor and p.device.type in ("cuda", "cpu") for p in params
        )
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=betas, fused=fused)
    return MuonAdamW(groups, betas=betas, momentum=t.muon_momentum, fused=fused)


def set_step(
    optimizer: torch.optim.Optimizer, step: int, t: TrainConfig, lr_scale: float = 1.0
) -> float:
    """Move every group to its value at `step`: each learning rate is its base rate times the
    schedule's factor (and `lr_scale`, the health guard's cut after a rollback), and Muon's
    momentum warms up. Returns train.lr's rate at this step."""
    lr = lr_at(step, t) * lr_scale
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
    """Muon for the group named "matrix", AdamW (torch's own) for the others, as one optimizer.

    One object, so the trainer, the gradient scaler, checkpoints and torch.distributed.checkpoint
    see a single ordinary optimizer: the AdamW's `param_groups` and `state` are slices of ours,
    shared, not copied.

    The Muon step is torch.optim.Muon's (Nesterov momentum, five quintic Newton-Schulz steps with
    Keller Jordan's coefficients, lr scaled by sqrt(max(1, rows / cols)), decoupled decay, state
    in "momentum_buffer") with one measured difference: torch runs Newton-Schulz in bf16 always,
    which on the CPUs measured here made the optimizer step take 190x AdamW's (0.95 s against
    0.005 s for the Shakespeare model), so on a CPU it runs in fp32.
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        betas: tuple[float, float],
        momentum: float,
        fused: bool = False,
    ) -> None:
        groups = list(groups)
        muon = [{**g, "momentum": momentum} for g in groups if g["name"] == "matrix"]
        adam = [g for g in groups if g["name"] != "matrix"]
        self._adam = torch.optim.AdamW(adam, betas=betas, fused=fused) if adam else None
        super().__init__(muon + adam, {})
        self._share()

    def _share(self) -> None:
        if self._adam:
            n = sum(g["name"] == "matrix" for g in self.param_groups)
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
        for group in self.param_groups:
            if group["name"] == "matrix":
                for p in group["params"]:
                    if p.grad is not None:
                        self._muon_update(p, group)
        if self._adam:
            self._adam.step()
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)  # sharded like p under FSDP
        buf, grad, param = state["momentum_buffer"], p.grad, p
        if isinstance(p, DTensor):
            # Newton-Schulz is a function of the whole matrix: each rank gathers it, takes the
            # step one process takes, and keeps its own rows (see the module's docstring)
            buf, grad, param = buf.full_tensor(), grad.full_tensor(), p.full_tensor()
        muon_step(param, grad, buf, group["lr"], group["weight_decay"], group["momentum"])
        if isinstance(p, DTensor):
            _keep_own_rows(p, param)
            _keep_own_rows(state["momentum_buffer"], buf)


NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # a quintic that converges fast near zero
NS_STEPS = 5


def muon_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor,
    lr: float,
    weight_decay: float,
    momentum: float,
) -> None:
    """One Muon update of a whole matrix, in place: Nesterov momentum, orthogonalise, decay, step."""
    buf.lerp_(grad, 1 - momentum)
    update = orthogonalise(grad.lerp(buf, momentum))
    param.mul_(1 - lr * weight_decay)
    param.add_(update, alpha=-lr * max(1.0, param.size(0) / param.size(1)) ** 0.5)


def orthogonalise(g: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U·Vᵀ of g = U·S·Vᵀ by Newton-Schulz: every singular value pushed near 1.

    bf16 on accelerators, where it is fast and precise enough; fp32 on a CPU (see MuonAdamW).
    """
    x = g.to(torch.bfloat16 if g.device.type != "cpu" else torch.float32)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # the Gram matrix of the short side is the small one
    x = x / x.norm().clamp(min=eps)
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


def _keep_own_rows(shard: DTensor, whole: torch.Tensor) -> None:
    """Copy this rank's piece of `whole` into the DTensor `shard`, in place."""
    mine = distribute_tensor(whole, shard.device_mesh, shard.placements).to_local()
    shard.to_local().copy_(mine)
