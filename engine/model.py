"""The GPT: a decoder-only transformer, written top to bottom in the order data flows through it.

One file, one reading. The architecture switches of `ModelConfig` — learned or rotary positions,
LayerNorm or RMSNorm (with or without gains), GELU, SwiGLU or ReLU², grouped-query attention,
QK-norm, logit soft-capping, zero-initialised projections, tied embeddings, biases — are small
branches inside these classes rather than a plugin system, so the whole model fits in one sitting.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from engine.contract.config import ModelConfig
from engine.contract.sizing import flops_per_token, loss_chunk_rows
from engine.loss import linear_cross_entropy


def make_norm(cfg: ModelConfig, width: int | None = None) -> nn.Module:
    width = width or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
    return nn.LayerNorm(width, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine, bias=cfg.bias)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair, each (block_size, head_dim / 2)."""
    hs = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hs/2) by their angle: the half-split layout of GPT-NeoX and Llama,
    so exported weights need no permutation."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def padding_mask(pad: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Which keys each query may see, (B, 1, T, start + T): causal, and never a padding token.

    A padding query sees only itself: a row with no visible key would make softmax divide by
    zero, and its output is never read anyway.
    """
    keys = torch.arange(start + T, device=pad.device)
    queries = keys[start:, None]  # (T, 1)
    real = keys >= pad[:, None, None]  # (B, 1, S)
    return (((keys <= queries) & real) | (keys == queries)).unsqueeze(1)


class KVCache:
    """Keys and values of every layer, kept between calls so each new token costs one position.

    Preallocated to `max_len` so decoding never reallocates; `pos` counts the tokens held.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's keys and values; return everything cached so far for the layer."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.pos = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.split = (q_dim, kv_dim, kv_dim)
        self.qkv = nn.Linear(cfg.n_embd, sum(self.split), bias=cfg.bias)
        self.proj = nn.Linear(q_dim, cfg.n_embd, bias=cfg.bias)
        # QK-norm bounds every attention logit by the head size, so a large learning rate
        # cannot blow softmax up into one-hot attention (the Muon recipe relies on it)
        self.q_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:  # before RoPE, as Qwen3 does, so the export is exact
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, past + T, hs)
        past = k.size(2) - T
        # SDPA's is_causal aligns the mask to the top-left corner, which is right only when
        # queries and keys start together. With a cache the queries are the last T of the keys:
        # one query may see everything, several need the diagonal shifted by `past`.
        if mask is None and past and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and past == 0 and T > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, nh * hs)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h = cfg.n_embd, cfg.hidden_dim
        self.swiglu, self.relu2 = cfg.mlp == "swiglu", cfg.mlp == "relu2"
        self.gelu_approximate = "none" if cfg.mlp == "gelu_exact" else "tanh"
        if self.swiglu:
            self.gate = nn.Linear(d, h, bias=cfg.bias)
            self.up = nn.Linear(d, h, bias=cfg.bias)
        else:
            self.fc = nn.Linear(d, h, bias=cfg.bias)
        self.proj = nn.Linear(h, d, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.relu2:
            h = F.relu(self.fc(x)).square()  # sparse like ReLU, smooth near zero like GELU
        else:
            # the tanh form is GPT-2's own ("gelu_new"), so imported weights give equal logits;
            # the exact (erf) form is nanoGPT's, and on a CPU the cheaper of the two
            h = F.gelu(self.fc(x), approximate=self.gelu_approximate)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, layer, mask)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(
                "GPT needs a resolved vocab_size; see engine.contract.sizing.resolve_model()"
            )
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg)
            # not persistent: derived from the config, so checkpoints stay pure weights
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: each block adds two projections into the residual stream, so their init is
        # scaled by 1/sqrt(2·n_layer) to keep the stream's variance flat with depth.
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                if cfg.zero_init:
                    # every block starts as the identity: the stream is the embedding until
                    # training finds a use for each block (modded-nanogpt, nanochat)
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets (-1 ignored), the mean cross-entropy.

        Logits too large to hold at once (see engine.loss) are never built whole: the loss is
        computed in chunks, and the logits returned are None.

        With a cache, `idx` continues the sequence the cache holds. `last_only` keeps just the
        final position's logits, which is all sampling needs. `pad` (B,) counts each row's
        left-padding tokens: nothing attends to them and positions start after them, so prompts
        of unequal lengths decode in one batch as each would alone.
        """
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        limit = (
            min(self.cfg.block_size, cache.max_len) if cache is not None else self.cfg.block_size
        )
        if start + T > limit:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the context of {limit}; "
                "crop the prompt to its most recent tokens"
            )
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        mask = None
        if pad is not None:
            mask = padding_mask(pad, start, T)
            pos = (pos - pad[:, None]).clamp(min=0)  # (B, T)
        x = self.wte(idx)  # (B, T, d)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        x = self.drop(x)
        rope = None
        if self.cfg.pos == "rope":
            rope = (self.rope_cos[pos], self.rope_sin[pos])
            if pad is not None:
                rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))  # (B, 1, T, hs/2) per row
        recompute = self.cfg.activation_checkpointing and self.training and cache is None
        for layer, block in enumerate(self.blocks):
            if recompute:
                # keep only each block's input; recompute its insides during backward
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope, cache, layer, mask)
        if cache is not None:
            cache.pos += T
        x = self.norm_f(x)
        if last_only and targets is None:
            x = x[:, -1:, :]
        if targets is not None:
            tokens, vocab = x.size(0) * x.size(1), self.lm_head.weight.size(0)
            rows = loss_chunk_rows(tokens, vocab)
            if rows < tokens:  # the full logits would be too large to hold: no logits returned
                h = x.reshape(tokens, -1)
                return None, linear_cross_entropy(h, self.lm_head.weight, targets.view(-1), rows)
        logits = self.lm_head(x)
        if self.cfg.logit_softcap > 0:
            # fp32: tanh saturates early in bf16; a bounded logit keeps early steps of a high
            # learning rate from betting everything on one token
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        if targets is None:
            return logits, None
        # fp32 for the loss: a bf16 log-softmax over a large vocabulary loses too much
        # summed then divided, not "mean": a chat row whose targets are all masked gives 0, not NaN
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            targets.view(-1),
            ignore_index=-1,
            reduction="sum",
        ) / (targets != -1).sum().clamp(min=1)
        return logits, loss

    def make_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        weight = self.wte.weight
        return KVCache(
            self.cfg,
            batch_size,
            max_len or self.cfg.block_size,
            device=weight.device,
            dtype=dtype or weight.dtype,
        )

    def num_params(self, embeddings: bool = True) -> int:
        """Unique parameters (a tied matrix counts once); without the token and position tables
        when `embeddings` is False, the count scaling laws are written in."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return flops_per_token(self.cfg, self.cfg.vocab_size, seq_len)

    def optimizer(
        self,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.95),
        fused: bool | None = None,
    ) -> torch.optim.AdamW:
        """GPT-2's AdamW over this model (engine.optim.build for every optimizer and group)."""
        from engine import optim
        from engine.contract.config import TrainConfig

        t = TrainConfig(lr=lr, weight_decay=weight_decay, beta1=betas[0], beta2=betas[1])
        return optim.build(self, t, fused=fused)
