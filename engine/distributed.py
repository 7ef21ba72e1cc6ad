"""Training on several processes under torchrun: the process group, DDP or FSDP2 around the
model, and the few agreements the loop needs.

torchrun starts one process per GPU and tells each who it is (RANK, LOCAL_RANK, WORLD_SIZE, and
where rank 0 listens). Every process runs the same loop on different rows of data. Rank 0 alone
hears the studio and writes files; anything that changes what the loop does next — a stop, a
pause, a studio command, a signal — is agreed by all ranks once per step, so they take every
step, evaluation and checkpoint together. A rank that fails says so and cuts its connections at
once, so the others fail too instead of waiting, and torchrun ends the job.

With one process nothing here communicates: the same calls return what they were given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from engine import lora
from engine.contract.errors import UsageError
from engine.device import Runtime
from engine.model import GPT

# Rank 0 may prepare a large corpus for hours, or write a large checkpoint, while the others wait
# on this group. A rank that fails ends the job at once (abort, then torchrun), so this bound only
# matters for a genuine deadlock.
CONTROL_TIMEOUT = timedelta(hours=24)
STOPS = ("", "stopped", "signal")  # the values of State.stop, in rising priority


@dataclass
class Group:
    """This process's place in the job, and the small collectives over all of it.

    They run on `control`, a gloo group on the CPU, even when training uses NCCL: a few bytes
    need no GPU, and waiting on the CPU never stalls a CUDA stream nor trips NCCL's watchdog.
    """

    runtime: Runtime  # on CUDA, the GPU of this process's LOCAL_RANK
    rank: int = 0
    world_size: int = 1
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, commands: list[Any], stop: str, studio: bool) -> tuple[list[Any], str, bool]:
        """Rank 0's studio commands and whether its studio is connected, and the strongest stop
        any rank has seen, the same on every rank.

        Called after every step: one all-reduce of three integers over gloo costs well under a
        millisecond, against steps of hundreds of milliseconds on the GPU presets, and it never
        waits for the GPU. Checking only every log interval would save little and let a stop or
        a pause land up to `log.interval` steps late; checking every step, all ranks stop,
        pause and save at the very step rank 0 was asked to.
        """
        if self.world_size == 1:
            return commands, stop, studio
        mine = [
            STOPS.index(stop),
            len(commands) if self.is_main else 0,
            int(studio and self.is_main),
        ]
        flags = torch.tensor(mine, dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.control)
        strongest, n_commands, connected = flags.tolist()
        shared = self.broadcast(commands if self.is_main else None) if n_commands else []
        return shared, STOPS[strongest], bool(connected)

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's `value` on every rank; the others wait here until rank 0 arrives."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` in rank order, on rank 0; an empty list on the others."""
        if self.world_size == 1:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0, group=self.control)
        return out or []

    def wait_for_main(self) -> None:
        """Hold the other ranks here while rank 0 finishes work of its own (a checkpoint)."""
        if self.world_size > 1:
            dist.barrier(group=self.control)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all ranks: the loss every rank logs is the global one."""
        if self.world_size == 1:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def seed(self, seed: int) -> None:
        """Give each rank its own random stream after the model is built (all ranks build it from
        the same seed), so dropout masks differ across the global batch as they do across one
        process's batch."""
        if self.world_size > 1:
            torch.manual_seed(seed + self.rank)


@contextlib.contextmanager
def start(runtime: Runtime) -> Iterator[Group]:
    """Join the job torchrun started (alone: nothing to join) and leave it cleanly; or, when
    this rank fails, name the rank in its error and cut its connections at once."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Group(runtime)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    runtime = _local_runtime(runtime, local_rank, world_size)
    owned = not dist.is_initialized()
    if owned:
        if runtime.device.type == "cuda":
            dist.init_process_group("nccl", device_id=runtime.device)
        else:
            dist.init_process_group("gloo")
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    group = Group(runtime, rank, world_size, control)
    try:
        group.runtime = agreed_precision(group)
        yield group
    except BaseException as err:
        _record(err)
        _abort(control)
        if isinstance(err, UsageError):
            raise UsageError(f"rank {rank} of {world_size}: {err}") from None
        raise
    dist.destroy_process_group(None if owned else control)  # None: every group, WORLD too


def agreed_precision(group: Group) -> Runtime:
    """Rank 0's precision on every rank: `dtype = "auto"` may time a calibration on each rank
    alone, and ranks that chose differently would train one model in two precisions."""
    runtime = group.runtime
    name, matmul, why = group.broadcast(
        (str(runtime.dtype).removeprefix("torch."), runtime.matmul, runtime.why)
    )
    return dataclasses.replace(runtime, dtype=getattr(torch, name), matmul=matmul, why=why)


def _local_runtime(runtime: Runtime, local_rank: int, world_size: int) -> Runtime:
    """Each process on a node takes the GPU of its LOCAL_RANK (NCCL); or they share the CPU."""
    where = runtime.device
    if where.type == "cuda":
        if where.index is not None:
            raise UsageError(
                f"train.device = '{where}' names one GPU, but torchrun started {world_size} "
                "processes; use auto or cuda, and each process takes the GPU of its LOCAL_RANK"
            )
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local_rank}: this machine shows {torch.cuda.device_count()} GPU(s); "
                "start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return dataclasses.replace(runtime, device=device)
    if where.type != "cpu":
        raise UsageError(
            f"train.device = '{where}': several processes train on CUDA GPUs (NCCL) or on CPUs "
            "(gloo); use auto, cuda or cpu"
        )
    return runtime


def _record(err: BaseException) -> None:
    """Hand the error to torchrun, whose summary at the end names the first rank that failed."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    with contextlib.suppress(Exception):
        get_error_handler().record_exception(err)


def _abort(control: Any) -> None:
    """Drop this rank's connections without the collective goodbye destroy_process_group would
    need: the others, waiting on us, fail at once (gloo) or are ended by torchrun (NCCL)."""
    for group in (control, dist.group.WORLD):
        with contextlib.suppress(Exception):
            group.abort()


class Parallel:
    """The model as the training steps see it: itself, DDP around it, or sharded by FSDP2.

    `model` stays the GPT the optimizer is built on — unwrapped under DDP, sharded in place under
    FSDP — and evaluation and sampling use it; `module` is what a training step calls.
    """

    def __init__(self, model: GPT, group: Group, parallel: str = "ddp") -> None:
        """`parallel` is train.parallel, "ddp" or "fsdp"; with one process it changes nothing."""
        self.group = group
        self.kind = parallel if group.world_size > 1 else "single"
        self.model = model
        where = group.runtime.device
        if self.kind == "fsdp":
            self.module: torch.nn.Module = _shard(model, group)
        else:
            model.to(where)
            self.module = model
            if self.kind == "ddp":
                from torch.nn.parallel import DistributedDataParallel

                # gradients as views of DDP's buckets: no second copy of every gradient
                self.module = DistributedDataParallel(
                    model, device_ids=[where] if where.type == "cuda" else None,
                    gradient_as_bucket_view=True,
                )  # fmt: skip

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Where gradients are reduced across ranks, around one micro-batch's forward/backward.

        DDP all-reduces only on the last micro-batch of a step: the ones before add up locally.
        FSDP reduce-scatters after every micro-batch: holding off would keep every layer's
        gathered, unsharded gradient until the last one, giving up the memory FSDP is there to
        save; the sum reaching the shards is the same.
        """
        if self.kind == "ddp" and not last:
            return self.module.no_sync()
        return contextlib.nullcontext()

    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Model and optimizer state as one process holds them — the GPT's own keys, AdamW's by
        parameter index — on rank 0 (empty elsewhere), so a checkpoint loads on any number of
        processes, one included. Under FSDP every rank must call this: it gathers the shards."""
        if self.kind != "fsdp":
            if not self.group.is_main:
                return {}, {}
            return self.model.state_dict(), optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=options)
        optimizer_state = get_optimizer_state_dict(self.model, optimizer, options=options)
        if not self.group.is_main:
            return {}, {}
        return model_state, by_index(optimizer_state, self._names(optimizer))

    def load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Restore a single-process-shaped optimizer state (see `full_state`) on every rank."""
        if self.kind != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        named = by_name(state, self._names(optimizer))
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, optimizer, named, options=options)

    def sampling_model(self) -> GPT | None:
        """A model rank 0 can generate with on its own (None on the other ranks).

        Under FSDP no rank holds the whole model, and generating with the sharded one would
        need every rank in step for every token; so the shards are gathered once into a plain
        copy on rank 0's CPU (a full copy on its GPU might not fit beside the training state).
        Every rank must call this under FSDP.
        """
        if self.kind != "fsdp":
            return self.model if self.group.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        if not self.group.is_main:
            return None
        copy = GPT(self.model.cfg)
        scale = lora.scale_in(self.model)  # a LoRA model samples with its adapters merged
        copy.load_state_dict(state if scale is None else lora.merged(state, scale))
        return copy

    def _names(self, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        name_of = {id(p): n for n, p in self.model.named_parameters()}
        return [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def _shard(model: GPT, group: Group) -> GPT:
    """FSDP2 in place: each block is a unit, the root keeps embeddings, final norm and output.

    The model is built on the CPU, identically on every rank, and `fully_shard` moves each
    rank's pieces to its GPU, so no GPU ever holds the whole model. Under bf16, weights are
    gathered in bf16 and gradients reduced in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    runtime = group.runtime
    if runtime.dtype == torch.float16:
        raise UsageError(
            "train.parallel = 'fsdp' trains in bfloat16 or float32: float16 needs its loss scale "
            "agreed across shards; set train.dtype = 'bfloat16' (or 'float32'), or use ddp"
        )
    mesh = init_device_mesh(runtime.device.type, (group.world_size,))
    policy = MixedPrecisionPolicy()
    if runtime.dtype == torch.bfloat16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def local(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a DTensor result (FSDP's gradient norm is one, replicated)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def by_index(state: dict, names: list[list[str]]) -> dict:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint's form) as a
    plain `Optimizer.state_dict()`: parameters numbered in the order of the param groups."""
    index = {name: i for i, name in enumerate(n for group in names for n in group)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]
        ],
    }


def by_name(state: dict, names: list[list[str]]) -> dict:
    """The inverse of `by_index`."""
    flat = [n for group in names for n in group]
    return {
        "state": {flat[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**g, "params": [flat[int(i)] for i in g["params"]]} for g in state["param_groups"]
        ],
    }


def local_shard(value: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a parameter: its shard under FSDP, the tensor itself otherwise."""
    return value.to_local() if isinstance(value, DTensor) else value
