"""`python -m engine.config CONFIG [--section.key=value ...]`: check a run config and show its size.

The command only; the config itself (schema, TOML, overrides, validation) is
engine.contract.config and its sizes are engine.contract.sizing.
"""

from __future__ import annotations

import argparse

from engine.contract.config import Config, dumps, load
from engine.contract.errors import cli_entry
from engine.contract.render import human
from engine.contract.sizing import summary


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Validate and size a config; --print shows the resolved TOML instead."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.config",
        description="Check a run config and show its size: parameters, FLOPs and memory.",
    )
    parser.add_argument("config", help="a TOML config, e.g. presets/tiny.toml")
    parser.add_argument("--print", action="store_true", help="print the resolved TOML")
    args, overrides = parser.parse_known_args(argv)
    cfg = load(args.config, overrides)
    print(dumps(cfg) if args.print else describe(cfg), end="")
    return 0


def describe(cfg: Config) -> str:
    """A few readable lines on what a config builds and what it costs."""
    s = summary(cfg)
    m, mem = cfg.model, s["memory"]
    heads = f"{m.n_head} heads" + (f" ({m.kv_heads} kv)" if m.kv_heads != m.n_head else "")
    guess = " (a guess: a char vocabulary is known once the corpus is read)"
    parts = ", ".join(f"{k} {human(v, 'B')}" for k, v in mem.items() if k != "total")
    step_flop = s["flops_per_token"] * s["tokens_per_step"]
    return "\n".join(
        [
            f"{cfg.name}: {m.n_layer} layers, {heads}, {m.n_embd} wide, context {m.block_size}; "
            f"{m.pos} positions, {m.norm}, {m.mlp}"
            + (", qk-norm" if m.qk_norm else "")
            + f"; {cfg.train.optimizer}",
            f"  tokenizer   {cfg.tokenizer.kind}, vocab {s['vocab_size']}"
            + (guess if s["vocab_is_guess"] else ""),
            f"  parameters  {human(s['params'])} "
            f"({human(s['params_no_embedding'])} without embeddings)",
            f"  per step    {human(s['tokens_per_step'])} tokens, {human(step_flop, 'FLOP')}",
            f"  whole run   {human(s['train_tokens'])} tokens in {cfg.train.max_steps} steps; "
            f"warmup {s['warmup_steps']}, samples every {s['sample_interval']}, "
            f"checkpoints every {s['checkpoint_interval']}",
            *(f"  note        {a.key} = {a.value} is {a.reason}" for a in s["adjustments"]),
            f"  memory      {human(mem['total'], 'B')} per device ({parts})",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
