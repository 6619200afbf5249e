"""Processes started by ``torchrun`` (or spawned in tests): the process group and the
collectives that ``depthflow analyze``, ``depthflow phases`` and ``depthflow fit`` use.

``torchrun --nproc-per-node N -m depthflow.cli.analyze ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`setup` joins the process group (NCCL on
CUDA, gloo on CPU). Without them (``WORLD_SIZE`` unset or 1) everything here is a no-op and
one process does all the work.

Sharding of an analysis (:func:`global_spans`, :func:`my_spans`): the images are cut into
global batches of one batch size (rank 0's, broadcast); global batch ``b`` goes to rank
``b mod N``; step ``s`` of the run is global batches ``s N .. s N + N - 1``, one per rank (the
last step may leave ranks idle). Every image is read exactly once, by one rank (no
duplicate padding). After every step:

* :func:`check_step` all-reduces an error flag, so a rank that failed (unreadable image,
  out of memory, ...) stops every rank with one :class:`RankError` naming the rank and its
  cause;
* :func:`gather_to_main` brings each rank's per-sample payload to rank 0 in rank order,
  which is global batch order: rank 0 writes the per-sample variables as they arrive, so
  memory stays one step of payloads.

At the end :func:`reduce_sums` adds every rank's sums (float64) on rank 0. A rank that
dies without a word is caught by the collectives' timeout (``DEPTHFLOW_DIST_TIMEOUT``
seconds, default 1800) or by the broken connection, as a :class:`RankError` on the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from depthflow.errors import ConfigError, DepthflowError

__all__ = ["DistInfo", "RankError", "setup", "teardown", "barrier", "all_mean",
           "broadcast_object", "check_step", "gather_to_main", "reduce_sums", "global_spans",
           "my_spans", "num_steps", "collective", "TIMEOUT_ENV", "host_tag", "quiet_followers"]

TIMEOUT_ENV = "DEPTHFLOW_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owner: bool = False           # this call initialised the process group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


class RankError(DepthflowError, RuntimeError):
    """A rank of a distributed run failed (or was lost); every rank raises this.

    ``relayed``: the error was reported to every rank by :func:`check_step` (rank 0 also
    raises it, so the others need not print it again)."""

    def __init__(self, message: str, *, relayed: bool = False) -> None:
        super().__init__(message)
        self.relayed = relayed


def quiet_followers(func):
    """For a command entry point: on ranks > 0, an error that rank 0 reports too ends the
    process with exit code 1 without printing it again (one line per failure, not N)."""
    import functools
    import sys

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RankError as exc:
            if exc.relayed and int(os.environ.get("RANK", "0")) != 0:
                sys.exit(1)
            raise

    return wrapper


def timeout_seconds() -> float:
    """Seconds a collective waits for the other ranks (``DEPTHFLOW_DIST_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be positive, got {raw!r}")
    return value


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group described by the environment; return the rank's device.

    NCCL when ``device`` is CUDA, gloo otherwise; collectives time out after
    :func:`timeout_seconds`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    owner = False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("distributed run on CUDA requested but CUDA is not available")
        try:
            dist.init_process_group(backend=backend,
                                    timeout=datetime.timedelta(seconds=timeout_seconds()))
        except (RuntimeError, ValueError) as exc:
            raise RankError(f"rank {rank}: cannot join the process group: "
                            f"{_first_line(exc)}") from exc
        owner = True
    if str(device).startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local,
                    owner=owner), device


def teardown(info: DistInfo) -> None:
    if info.owner and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def host_tag() -> str:
    """``host.pid``: what temporary names carry, so that stale ones can be recognised."""
    return f"{socket.gethostname()}.{os.getpid()}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def collective(info: DistInfo, what: str) -> Iterator[None]:
    """Turn a failed collective (a peer died, timed out, closed its connection) into a
    :class:`RankError` naming this rank and what it was doing."""
    try:
        yield
    except RankError:
        raise
    except (RuntimeError, ConnectionError, OSError) as exc:
        raise RankError(f"rank {info.rank}: lost contact with the other processes during "
                        f"{what} ({_first_line(exc)}); another rank died or timed out "
                        f"(timeout: {TIMEOUT_ENV}={timeout_seconds():g} s)") from exc


def barrier(info: DistInfo) -> None:
    if info.active:
        with collective(info, "a barrier"):
            dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; identity on one process)."""
    if not info.active:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / info.world


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if not info.active:
        return obj
    box = [obj]
    with collective(info, "a broadcast"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory ({_first_line(exc)})"
    if isinstance(exc, DepthflowError):
        return _first_line(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def check_step(info: DistInfo, error: BaseException | None, *, what: str = "a batch") -> None:
    """All-reduce an error flag: if any rank failed, every rank raises the same
    :class:`RankError` (the lowest failing rank and its cause); the failing rank chains
    its own exception. On one process a failure is re-raised unchanged."""
    if not info.active:
        if error is not None:
            raise error
        return
    device = _collective_device()
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=device)
    with collective(info, what):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not int(flag.item()):
        return
    mine = None if error is None else (info.rank, _error_text(error), type(error).__name__)
    reports: list[Any] = [None] * info.world
    with collective(info, "the error report"):
        dist.all_gather_object(reports, mine)
    rank, text, _ = min(r for r in reports if r is not None)
    message = f"rank {rank} of {info.world} failed: {text}"
    if error is not None:
        raise RankError(message, relayed=True) from error
    raise RankError(message, relayed=True)


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_to_main(payload: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``payload`` on rank 0, in rank order (``None`` elsewhere)."""
    if not info.active:
        return [payload]
    out: list[Any] | None = [None] * info.world if info.main else None
    with collective(info, "gathering per-sample results"):
        dist.gather_object(payload, out, dst=0)
    return out


def reduce_sums(sums: Mapping[str, Any], info: DistInfo) -> dict[str, Any]:
    """Add each entry of ``sums`` over ranks onto rank 0.

    Entries are tensors (summed in float64, integer tensors as int64), ints or floats; an
    entry may be ``None`` on ranks that saw no data (rank 0 never: it always holds global
    batch 0), and then counts as zeros of rank 0's shape. Other ranks get their own input
    back. On one process the input is returned.
    """
    if not info.active:
        return dict(sums)
    layout = broadcast_object({k: _describe(v) for k, v in sums.items()}, info)
    if set(sums) - set(layout):
        raise RankError(f"rank {info.rank}: its accumulators differ from rank 0's "
                        f"({sorted(set(sums) - set(layout))})")
    device = _collective_device()
    out: dict[str, Any] = {}
    for key in sorted(layout):
        kind, shape, dtype = layout[key]
        value = sums.get(key)
        if kind == "tensor":
            wide = torch.int64 if dtype.startswith("torch.int") else torch.float64
            t = (torch.zeros(shape, dtype=wide, device=device) if value is None else
                 value.detach().to(device=device, dtype=wide).clone())
        else:
            t = torch.tensor([0 if value is None else value],
                             dtype=torch.float64 if kind == "float" else torch.int64,
                             device=device)
        with collective(info, f"reducing {key}"):
            dist.reduce(t, dst=0)
        if kind == "tensor":
            back = t.to(value.device if value is not None else torch.device("cpu"))
            out[key] = back.to(_dtype(dtype)) if dtype.startswith("torch.int") else back
        else:
            out[key] = float(t.item()) if kind == "float" else int(t.item())
    return out if info.main else dict(sums)


def _describe(value: Any) -> tuple[str, tuple[int, ...], str]:
    if value is None:
        return ("none", (), "")
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cannot reduce a {type(value).__name__}")
    return ("float" if isinstance(value, float) else "int", (), "")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def global_spans(num_items: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every global batch."""
    return [(s, min(s + batch_size, num_items)) for s in range(0, num_items, batch_size)]


def my_spans(spans: list[tuple[int, int]], info: DistInfo) -> list[tuple[int, int]]:
    """The global batches of this rank: batch ``b`` goes to rank ``b mod world``."""
    return spans[info.rank::info.world]


def num_steps(num_batches: int, world: int) -> int:
    """Steps of a sharded run: each step is one global batch per rank."""
    return math.ceil(num_batches / world)
