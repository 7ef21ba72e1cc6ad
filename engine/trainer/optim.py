"""The model and its optimizer as one part: the training step, and their saved state.

The weights are loaded before the model is wrapped for several processes (they fix its shape
and FSDP shards them in place), so `load_state_dict` restores the optimizer and the loss
scaler; `state_dict` gives all three, gathered as one process would hold them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine import device, distributed
from engine.health import HealthGuard, Verdict, all_finite
from engine.lora import adapter_state
from engine.model import GPT


class ModelAndOptimizer:
    def __init__(
        self,
        model: GPT,
        parallel: distributed.Parallel,
        optimizer: torch.optim.Optimizer,
        runtime: device.Runtime,
        compile: bool = False,
    ) -> None:
        self.model = model  # unwrapped under DDP, sharded in place under FSDP
        self.parallel = parallel
        self.optimizer = optimizer
        self.runtime = runtime
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_scaler)
        self.step_fn = torch.compile(parallel.module) if compile else parallel.module
        self.last_norm: torch.Tensor | float = 0.0  # of the latest step, before clipping

    def step(
        self, loader: Any, grad_accum: int, grad_clip: float, guard: HealthGuard
    ) -> tuple[float, Verdict]:
        """One optimizer step over `grad_accum` micro-batches, at the learning rates
        engine.optim.set_step gave the groups, applied only if `guard` passes it; returns the
        mean loss over all ranks and the verdict.

        The loss is read back every step (one small sync) because an update must be judged
        before it is applied: a NaN on a step that is not logged would otherwise reach the
        weights. The gradient norm is global after the all-reduce and the loss is the mean over
        ranks, so every rank reaches the same verdict.
        """
        loss_sum = torch.zeros((), device=self.runtime.device)
        for micro in range(grad_accum):
            x, y = loader.next()
            with self.parallel.gradient_sync(last=micro == grad_accum - 1):
                with self.runtime.compute:
                    _, loss = self.step_fn(x, y)
                self.scaler.scale(loss / grad_accum).backward()
            loss_sum += loss.detach() / grad_accum
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), grad_clip if grad_clip > 0 else math.inf, foreach=True
        )
        loss = float(self.parallel.group.mean(loss_sum).item())
        grad_norm = float(distributed.local(norm))
        if self.scaler.is_enabled() and math.isfinite(loss) and not math.isfinite(grad_norm):
            verdict = Verdict()  # fp16 overflow: the scaler skips this step and lowers its scale
        else:
            verdict = guard.judge(loss, grad_norm)
        if verdict.ok:
            self.scaler.step(self.optimizer)
            if math.isfinite(grad_norm):
                self.last_norm = grad_norm
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, verdict

    def weights_finite(self) -> bool:
        """Whether every rank's weights (its shards, under FSDP) are all finite."""
        local = [distributed.local_shard(w) for w in self.model.parameters()]
        flag = torch.tensor(float(all_finite(local)), device=self.runtime.device)
        return bool(self.parallel.group.mean(flag).item() == 1.0)

    def state_dict(self) -> dict[str, Any]:
        """Every rank must call this under FSDP (it gathers the shards); rank 0 gets the state."""
        model_state, optimizer_state = self.parallel.full_state(self.optimizer)
        if any(".lora_" in k for k in model_state):  # LoRA: only what trains is saved
            model_state = adapter_state(model_state)
        return {
            "model": model_state,
            "optimizer": {"adamw": optimizer_state, "scaler": self.scaler.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_optimizer(self.optimizer, state["optimizer"]["adamw"])
        if state["optimizer"]["scaler"] is not None:
            self.scaler.load_state_dict(state["optimizer"]["scaler"])
