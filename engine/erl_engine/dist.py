"""Engine ranks under torchrun: one engine process per device, driven by rank 0.

Launch (one machine, 2 ranks; several machines add --nnodes and a rendezvous endpoint, see
docs/scaling.md):

    torchrun --standalone --nproc-per-node 2 -m erl_engine.server            # stdio, as a child
    torchrun --standalone --nproc-per-node 8 -m erl_engine.server --http ... # HTTP

Rank 0 speaks the protocol unchanged. It validates each request and broadcasts it over a control
group; every rank executes it, and rank 0 gathers every rank's outcome and answers once. When any
rank fails, rank 0 answers with that rank's error (prefixed `rank k:`); no rank is left waiting,
because within a method every step that issues a collective is preceded by `agree()`, an all-reduce of
"did anything fail here" flags, so all ranks raise together instead of one blocking in a collective
the others never join; loadModel too (a path one node does not see, a device without room), before
the dtype vote and before DDP/FSDP2 set up, and forward under DDP (whose micro-batches issue no
collective) before gathering the results. Errors inside a collective itself (a device lost
mid-all-reduce), and a rank failing in the middle of a forward or backward pass (out of memory, say)
while the others are inside DDP's or FSDP2's own collectives, end at the process group's timeout
($ERL_ENGINE_DIST_TIMEOUT seconds, default 600) with an error, not a hang.

Work is split so that every rank sees the whole request (validation is identical everywhere) and
executes its share:
  forward / forwardBackward  datums are dealt to ranks by token count (longest first, each to the
                             rank with the fewest tokens so far); every rank runs the same number of
                             micro-batches (short ranks pad with zero-weight ones) because DDP and
                             FSDP2 issue collectives per micro-batch; the loss divisor is computed from
                             the whole request, so the gradient equals the single-process one.
  sample                     prompts are dealt in contiguous blocks and each sequence keeps its global
                             row id, so its random draws are those of a single-process run.
  saveState / export         rank 0 writes the single-process format (full tensors), so a state moves
                             freely between 1 and N ranks; loadState reads it on every rank.

Parallelism ($ERL_ENGINE_PARALLEL): "ddp" replicates the model (DistributedDataParallel; gradients
all-reduced at the last micro-batch of each forwardBackward), "fsdp" shards every decoder layer and
the root with FSDP2 (`fully_shard`); "auto" (default) picks DDP when parameters, gradients and Adam
state fit in 60% of the device's memory, else FSDP2. Both work with LoRA and full fine-tuning. DDP
and FSDP2 average gradients over ranks, so each rank's loss is multiplied by the world size.

Fault injection for tests: $ERL_ENGINE_FAULT="<rank>:<method>" makes that rank raise inside that
method, after the request was validated (the case a real per-rank failure takes); for loadModel, after
the dtype vote, where the weights are read; "forward/batch" inside forward's micro-batch loop.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from .protocol import ProtocolError


class PeerFailed(Exception):
    """Raised on the ranks that did not fail themselves when another rank did."""


class Dist:
    def __init__(self) -> None:
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and os.environ.get("ERL_ENGINE_DIST_BACKEND", "") != "gloo"
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
        timeout = datetime.timedelta(seconds=float(os.environ.get("ERL_ENGINE_DIST_TIMEOUT", "600")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
        self.device_type = "cuda" if use_cuda else "cpu"
        # Requests arrive whenever the client sends them: the control group waits without a deadline.
        self.ctrl = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=3650))
        # Small CPU-side agreements (flags, metrics) go over gloo too, also with NCCL for tensors.
        self.cpu = dist.new_group(backend="gloo", timeout=timeout) if use_cuda else dist.group.WORLD
        self.parallel = os.environ.get("ERL_ENGINE_PARALLEL", "auto")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            raise SystemExit(f"erl engine: ERL_ENGINE_PARALLEL must be auto, ddp or fsdp, got {self.parallel!r}")
        fault = os.environ.get("ERL_ENGINE_FAULT", "")
        self.fault: tuple[int, str] | None = None
        if fault:
            r, _, m = fault.partition(":")
            self.fault = (int(r), m)
        self.mode = "ddp"  # set per model by wrap()

    # ---- requests -----------------------------------------------------------------------------

    def broadcast_request(self, req: Any) -> Any:
        box = [req]
        dist.broadcast_object_list(box, src=0, group=self.ctrl)
        return box[0]

    def gather_outcomes(self, outcome: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(outcome, out, dst=0, group=self.cpu)
        return out

    def maybe_fault(self, method: str) -> None:
        if self.fault and self.fault == (self.rank, method):
            raise RuntimeError(f"injected fault on rank {self.rank} in {method} (ERL_ENGINE_FAULT)")

    # ---- agreement and reductions ------------------------------------------------------------

    def agree(self, err: BaseException | None) -> None:
        """All ranks learn whether any failed; a failed rank re-raises its error, the others PeerFailed."""
        flag = torch.tensor([1 if err is not None else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu)
        if err is not None:
            raise err
        if int(flag.item()):
            raise PeerFailed("another rank failed")

    def max_int(self, x: int) -> int:
        t = torch.tensor([x], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu)
        return int(t.item())

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.cpu)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.cpu)

    def barrier_ctrl(self) -> None:
        """All ranks meet on the control group (at shutdown, after the shutdown broadcast)."""
        dist.barrier(group=self.ctrl)

    # ---- work split ---------------------------------------------------------------------------

    def shard_by_tokens(self, lengths: list[int]) -> list[int]:
        """This rank's datum indices: longest first, each to the rank with the fewest tokens so far."""
        load = [0] * self.world
        mine: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
            r = min(range(self.world), key=lambda r: (load[r], r))
            load[r] += lengths[i]
            if r == self.rank:
                mine.append(i)
        return sorted(mine)

    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block [lo, hi) of n items (the first n % world ranks get one more)."""
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    # ---- model wrapping -----------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module that training calls go through: a DDP wrapper, or `model` itself sharded in place."""
        self.mode = self._choose(model, device)
        if self.mode == "ddp":
            import warnings

            from torch.nn.parallel import DistributedDataParallel

            with warnings.catch_warnings():
                # torch 2.13 renames the option; 2.11 (a GPU machine's build) knows only this name.
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                return DistributedDataParallel(
                    model,
                    device_ids=[device.index if device.index is not None else self.local_rank]
                    if device.type == "cuda"
                    else None,
                    broadcast_buffers=False,
                )
        from torch.distributed.fsdp import fully_shard

        layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
        if not layers:
            raise ProtocolError("bad_request", "FSDP2 needs decoder layers (a module class named *DecoderLayer)")
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        return model

    def _choose(self, model: torch.nn.Module, device: torch.device) -> str:
        if self.parallel != "auto":
            return self.parallel
        if device.type != "cuda":
            return "ddp"
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        # Trainable fp32 parameters carry a gradient and two Adam moments.
        extra = sum(p.numel() * 4 * 3 for p in model.parameters() if p.requires_grad)
        total = torch.cuda.get_device_properties(device).total_memory
        return "ddp" if weights + extra < 0.6 * total else "fsdp"


def reshard(model: torch.nn.Module) -> None:
    """Frees FSDP2's gathered weights. The root module keeps them after a forward without backward,
    and until resharded its parameters are the whole tensors, not this rank's shards."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


_CURRENT: Dist | None = None


def current() -> Dist | None:
    """The rank context when this process was started by torchrun with more than one rank."""
    global _CURRENT
    # ERL_ENGINE_DIST=1 takes the rank path with a single rank too (the GPU check's one NCCL rank).
    ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1 or (os.environ.get("ERL_ENGINE_DIST") == "1" and "RANK" in os.environ)
    if _CURRENT is None and ranks:
        _CURRENT = Dist()
    return _CURRENT


def is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter or state tensor; a collective under FSDP2."""
    return t.full_tensor() if is_dtensor(t) else t  # type: ignore[attr-defined]
