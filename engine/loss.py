"""The output layer and its cross-entropy, in chunks of rows, so full logits never exist at once.

With a 100k-token vocabulary the logits of one micro-batch outweigh the whole model: 32 x 1024 x
100,352 fp32 values are 13 GB, and autograd keeps them (and briefly two gradients their size)
from the forward to the backward. Here each chunk of rows computes its logits, its part of the
loss and — the softmax being at hand — its gradients for the hidden states and the output
matrix, then drops the logits. What outlives the forward is one gradient the size of the hidden
states and one the size of the output matrix. The matrix multiplies are the same three per row
an unchunked layer does (forward, and two for backward), so nothing is recomputed.

`engine.contract.sizing.loss_chunk_rows` decides the chunk size, so the memory estimate and this agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# eager even inside a torch.compile'd model: the chunk loop would unroll into one graph node per
# chunk, and each chunk is three large matrix multiplies that compiling cannot speed up
@torch.compiler.disable
def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
    softcap: float | None = None,
) -> torch.Tensor:  # fmt: skip
    """Mean cross-entropy of `softcap`-capped logits `h @ weight.T` (h (N, d), targets (N,),
    -1 ignored), `chunk` rows at a time."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _Chunked.apply(h, weight, targets, chunk, dtype, softcap)
    with torch.autocast(device, enabled=False):
        total, count = _loss_and_grads(h, weight, targets, chunk, dtype, softcap, grads=False)[:2]
    return total / count


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk, dtype, softcap):
        with torch.autocast(h.device.type, enabled=False):
            total, count, grad_h, grad_w = _loss_and_grads(
                h, weight, targets, chunk, dtype, softcap, grads=True
            )
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return (
            (grad_h * scale).to(ctx.dtypes[0]),
            (grad_w * scale).to(ctx.dtypes[1]),
            None, None, None, None,
        )  # fmt: skip


@torch.no_grad()
def _loss_and_grads(h, weight, targets, chunk, dtype, softcap, grads):
    """Sum of per-row losses, the count of rows scored, and (with `grads`) the gradients of
    that sum for h (as fp32) and weight (accumulated in fp32)."""
    w = weight.to(dtype)
    total = torch.zeros((), device=h.device)
    count = (targets != -1).sum().clamp(min=1)  # a fully masked chat row scores 0, not NaN
    grad_h = torch.empty(h.shape, device=h.device, dtype=torch.float32) if grads else None
    grad_w = torch.zeros(weight.shape, device=h.device, dtype=torch.float32) if grads else None
    for start in range(0, h.size(0), chunk):
        rows = slice(start, start + chunk)
        x, t = h[rows].to(dtype), targets[rows]
        z = F.linear(x, w).float()  # (c, V)
        if softcap is not None:
            capped = torch.tanh(z / softcap)
            z = capped * softcap
        valid = t != -1
        picked = t.clamp(min=0)[:, None]
        lse = torch.logsumexp(z, dim=-1)
        total += ((lse - z.gather(1, picked).squeeze(1)) * valid).sum()
        if not grads:
            continue
        dz = torch.exp_(z.sub_(lse[:, None]))  # softmax, in place of z
        dz.scatter_add_(1, picked, torch.full_like(picked, -1, dtype=dz.dtype))
        dz.mul_(valid[:, None])
        if softcap is not None:  # d cap·tanh(u/cap) / du = 1 - tanh²
            dz.mul_(1 - capped.square_())
        dz = dz.to(dtype)
        grad_h[rows] = dz @ w
        grad_w += (dz.t() @ x).float()
    return total, count, grad_h, grad_w
