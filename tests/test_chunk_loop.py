"""The one chunk loop (ches.run.chunk_loop.run_chunks), on a model-free work whose chunks are row numbers: every
chunk runs once and in order, a cached chunk is read and not run again, the bar counts every unit once, and
a chunk that fails in one of two processes fails both (two ranks simulated by threads that really exchange)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from ches import ChesError
from ches.run.cache import ShardCache
from ches.run.chunk_loop import Chunk, ChunkSizes, ChunkWork, run_chunks
from ches.run.distributed import Process

SIZES = [3, 1, 4, 1, 5, 9, 2]  # uneven chunks: 25 rows


class Hub:
    """What ``torch.distributed.all_gather`` does for threads: every rank's tensor, in rank order, on every rank."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list = [None] * world

    def exchange(self, rank: int, values: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = values.clone()
        self.barrier.wait()
        every = list(self.slots)
        self.barrier.wait()  # nobody writes the next exchange before everyone read this one
        return every


@dataclasses.dataclass(frozen=True)
class ThreadRank(Process):
    hub: Hub | None = None

    def gather_flat(self, values: torch.Tensor) -> list[torch.Tensor]:
        return self.hub.exchange(self.rank, values)


def on_ranks(world: int, job):
    """``job(process)`` on ``world`` simulated ranks at once; each rank's result or exception."""
    hub, results = Hub(world), [None] * world

    def run(rank: int) -> None:
        try:
            results[rank] = job(ThreadRank(rank, world, hub=hub))
        except Exception as error:  # noqa: BLE001 (the test looks at it)
            results[rank] = error

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


class Bar:
    def __init__(self) -> None:
        self.n, self.closed = 0, False

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


class RowWork(ChunkWork[range, torch.Tensor]):
    """Chunk ``i`` holds the next ``SIZES[i]`` row numbers; its "result" is each row's number squared."""

    names = ("squares",)

    def __init__(self, sizes=SIZES, fail_at: int | None = None) -> None:
        starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.plan = [range(starts[i], starts[i + 1]) for i in range(len(sizes))]
        self.fail_at, self.computed, self.kept = fail_at, [], []
        self.bar = Bar()

    def costs(self):
        return [float(len(rows)) for rows in self.plan]

    def open_bar(self, mine):
        return self.bar

    def chunks(self, mine, bar):
        for position in mine:
            rows = self.plan[position]
            yield Chunk(position, rows, rows=len(rows), units=len(rows))

    def key(self, item):
        return f"rows-{item.start}-{item.stop}"

    def compute(self, item, bar):
        if item.start == self.fail_at:
            raise KeyError(f"chunk at row {item.start}")
        self.computed.append(item)
        if bar is not None:
            bar.update(len(item))
        return {"squares": torch.tensor([row * row for row in item], dtype=torch.float64)}

    def keep(self, chunk, tensors):
        self.kept.append((chunk.item, tensors["squares"]))

    def gather(self, process, reused):
        index = torch.cat([torch.tensor(list(rows)) for rows, _ in self.kept]) if self.kept else torch.zeros(0, dtype=torch.long)
        values = torch.cat([squares for _, squares in self.kept]) if self.kept else torch.zeros(0, dtype=torch.float64)
        return process.gather_rows(index, values, sum(len(rows) for rows in self.plan))


EXPECTED = torch.tensor([float(row * row) for row in range(sum(SIZES))], dtype=torch.float64)  # by hand


def test_every_chunk_runs_once_in_order_and_the_bar_counts_each_row_once():
    work = RowWork()
    ran = run_chunks(work, process=Process(), progress=True)
    assert work.computed == work.plan  # each once, in plan order, uneven sizes and all
    assert [rows for rows, _ in work.kept] == work.plan
    torch.testing.assert_close(ran.result, EXPECTED, rtol=0, atol=0)
    assert ran.reused == 0 and work.bar.n == sum(SIZES) and work.bar.closed


def test_no_bar_without_progress():
    work = RowWork()
    run_chunks(work, process=Process(), progress=False)
    assert work.bar.n == 0 and not work.bar.closed


def test_a_cached_chunk_is_read_not_run_again(tmp_path):
    cache = ShardCache(tmp_path, "settings")
    first = RowWork()
    run_chunks(first, process=Process(), cache=cache, progress=True)
    again = RowWork()
    ran = run_chunks(again, process=Process(), cache=cache, progress=True)
    assert again.computed == [] and ran.reused == len(SIZES)
    assert again.bar.n == sum(SIZES)  # a chunk read from the cache moves the bar by its units
    torch.testing.assert_close(ran.result, EXPECTED, rtol=0, atol=0)
    (tmp_path / "settings" / "chunk-rows-4-8.safetensors").unlink()  # one shard lost: only that chunk runs
    partly = RowWork()
    assert run_chunks(partly, process=Process(), cache=cache).reused == len(SIZES) - 1
    assert partly.computed == [range(4, 8)]


def test_two_processes_share_the_chunks_and_each_returns_every_row():
    works = [RowWork(), RowWork()]
    results = on_ranks(2, lambda process: run_chunks(works[process.rank], process=process))
    computed = [rows for work in works for rows in work.computed]
    assert sorted(computed, key=lambda rows: rows.start) == works[0].plan  # every chunk once, on one rank
    assert works[0].computed and works[1].computed
    for ran in results:
        torch.testing.assert_close(ran.result, EXPECTED, rtol=0, atol=0)


def test_a_chunk_failing_in_one_of_two_processes_fails_both():
    works = [RowWork(fail_at=None), RowWork(fail_at=None)]
    plan_rank = [Process(rank, 2).share(works[0].costs()) for rank in (0, 1)]
    failing = works[1].plan[plan_rank[1][0]].start  # the first chunk rank 1 runs
    works[1].fail_at = failing
    results = on_ranks(2, lambda process: run_chunks(works[process.rank], process=process, progress=True))
    assert isinstance(results[1], KeyError)  # where it happened: the error itself
    assert isinstance(results[0], ChesError)
    assert str(results[0]) == f"process 1 failed: KeyError: 'chunk at row {failing}'"
    assert works[0].bar.closed and not works[1].bar.closed  # the main process's bar only, closed before the error


def test_chunk_sizes_are_checked():
    assert ChunkSizes() == ChunkSizes(pairs=256, sequences=512)
    with pytest.raises(ChesError, match=r"^chunk_sizes.sequences must be a whole number of at least 1; got 2.5.$"):
        ChunkSizes(sequences=2.5)
