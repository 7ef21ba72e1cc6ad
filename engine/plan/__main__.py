"""`python -m engine.plan CONFIG --gpus N`: will it fit, and how to spread it."""

from __future__ import annotations

import argparse

from engine.contract import config
from engine.contract.errors import cli_entry
from engine.plan import describe


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.plan",
        description="Per-GPU training memory under DDP and FSDP, whether it fits, and the "
        "largest micro-batch that does. Any config key can be overridden as --section.key=value.",
    )
    parser.add_argument("config", help="a TOML config, e.g. presets/large.toml")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs in the whole job (default 1)")
    parser.add_argument(
        "--gpu-memory-gb", type=float, default=80.0, metavar="M",
        help="memory of each GPU in GiB, as nvidia-smi counts it (default 80)",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    cfg = config.load(args.config, overrides)
    print(describe(cfg, args.gpus, args.gpu_memory_gb), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
