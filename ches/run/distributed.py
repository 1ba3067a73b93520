"""Data parallelism behind a few plain calls (rank, world size, sharing work, gathering results).

Works unchanged under ``torchrun`` and ``accelerate launch`` (both set ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``): the process group is initialized from those
variables when there is more than one process (NCCL on CUDA, gloo on CPU). With one process nothing
special happens. The math never sees any of this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    """This process's place in the job: its rank among `world` processes, sharing work and gathering results."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> "Process":
        """The job's layout, initializing the default process group if the launcher asked for one.

        >>> Process.current() if "WORLD_SIZE" not in os.environ else Process()
        Process(rank=0, world=1, local_rank=0)
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and not (dist.is_available() and dist.is_initialized()):
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def share(self, costs: Sequence[float]) -> list[int]:
        """Indices of the items this rank handles, balancing the summed cost across ranks.

        Largest first, each to the least loaded rank (ties: lowest rank); deterministic.

        >>> Process(0, 2).share([5, 4, 3, 3]), Process(1, 2).share([5, 4, 3, 3])
        ([0, 3], [1, 2])
        """
        loads = [0.0] * self.world
        mine = []
        for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            owner = min(range(self.world), key=lambda r: (loads[r], r))
            loads[owner] += costs[index]
            if owner == self.rank:
                mine.append(index)
        return sorted(mine)

    def fail_together(self, error: Exception | None) -> None:
        """Call at the same point on every process: raises ``error`` where it happened and, on the other
        processes, a :class:`~ches.errors.ChesError` saying what failed where (the same message, for a
        ChesError); returns when no process failed. So no process is left waiting for one that stopped.

        >>> Process().fail_together(None)
        """
        import json

        from ..errors import ChesError, one_line

        text = "" if error is None else json.dumps({"ches": isinstance(error, ChesError), "type": type(error).__name__,
                                                    "message": one_line(error, limit=2000)})
        reports = self.gather_flat(torch.tensor(list(text.encode()), dtype=torch.long)) if self.world > 1 else []
        if error is not None:
            raise error
        for rank, report in enumerate(reports):
            if len(report):
                failure = json.loads(bytes(report.tolist()).decode())
                if failure["ches"]:
                    raise ChesError(failure["message"])
                raise ChesError(f"process {rank} failed: {failure['type']}: {failure['message']}")

    def gather_columns(self, indices: torch.Tensor, columns: dict[str, torch.Tensor], total: int) -> dict[str, list]:
        """Every rank's rows of named columns (``columns[name][i]`` is row ``indices[i]``), as lists of ``total``
        values in row order, on every rank.

        >>> Process().gather_columns(torch.tensor([1, 0]), {"x": torch.tensor([5, 7])}, 2)
        {'x': [7, 5]}
        """
        return {name: self.gather_rows(indices, values, total).tolist() for name, values in columns.items()}

    def gather_labels(self, labels: dict[int, str], total: int) -> list[str | None]:
        """Every rank's text labels of some rows (row -> text), as a list of ``total`` (None where no rank
        labelled the row), on every rank.

        >>> Process().gather_labels({2: "skipped"}, 3)
        [None, None, 'skipped']
        """
        every: dict[int, str] = {}
        for block in self.gather_flat(torch.tensor(list(json.dumps(labels).encode()), dtype=torch.long)):
            every |= {int(row): label for row, label in json.loads(bytes(block.tolist()).decode()).items()}
        return [every.get(row) for row in range(total)]

    def gather_rows(self, indices: torch.Tensor, values: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's ``values[i]`` placed at row ``indices[i]`` of a ``[total, ...]`` tensor, on every rank.

        >>> Process().gather_rows(torch.tensor([2, 0]), torch.tensor([[1.0], [2.0]]), 3).tolist()
        [[2.0], [0.0], [1.0]]
        """
        row_shape = values.shape[1:]
        out = torch.zeros((total, *row_shape), dtype=values.dtype)
        for rank_indices, rank_values in zip(self.gather_flat(indices), self.gather_flat(values.reshape(-1))):
            out[rank_indices] = rank_values.reshape(len(rank_indices), *row_shape)
        return out

    def gather_flat(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's 1-D ``values`` (any lengths), in rank order, on every rank (on the CPU).

        >>> Process().gather_flat(torch.tensor([3, 1]))
        [tensor([3, 1])]
        """
        if self.world == 1:
            return [values]
        device = self.device() if dist.get_backend() == "nccl" else torch.device("cpu")
        count = torch.tensor([len(values)], device=device)
        counts = [torch.zeros_like(count) for _ in range(self.world)]
        dist.all_gather(counts, count)
        longest = int(max(c.item() for c in counts))
        padded = torch.zeros(longest, dtype=values.dtype, device=device)
        padded[: len(values)] = values.to(device)
        gathered = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        return [tensor[: int(c.item())].cpu() for tensor, c in zip(gathered, counts)]
