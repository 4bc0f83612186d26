"""Token budget, chunked prefill mixed with decodes, max running sequences, priorities, preemption."""

from __future__ import annotations

from local_engine.block_manager import BlockManager
from local_engine.config import EngineConfig
from local_engine.sampling_params import SamplingParams
from local_engine.scheduler import ScheduledSeq, Scheduler
from local_engine.sequence import Sequence


def _sched(num_blocks: int = 64, **kw: int | None) -> Scheduler:
    cfg = EngineConfig(block_size=4, num_kv_blocks=num_blocks, **kw)  # type: ignore[arg-type]
    return Scheduler(cfg, BlockManager(num_blocks, 4, enable_prefix_caching=False))


def _seq(rid: str, n: int, priority: int = 0) -> Sequence:
    return Sequence(rid, list(range(10, 10 + n)), SamplingParams(priority=priority))


def _finish_step(batch: list[ScheduledSeq]) -> None:
    """What the engine does after running a batch: advance, and append a token where one was sampled."""
    for s in batch:
        sampled = s.samples
        s.seq.num_computed_tokens += s.num_tokens
        if sampled:
            s.seq.token_ids.append(7)


def test_long_prompt_is_prefilled_in_chunks_next_to_decodes() -> None:
    sched = _sched(max_num_batched_tokens=16)
    short = _seq("short", 3)
    sched.add(short)
    _finish_step(sched.schedule())  # short prefilled, now decoding
    long = _seq("long", 40)
    sched.add(long)
    chunks = []
    while long.num_computed_tokens < 40:
        batch = sched.schedule()
        assert sum(s.num_tokens for s in batch) <= 16
        assert {s.seq.request_id: s.num_tokens for s in batch}["short"] == 1  # the decode never waits
        chunks.append(next(s.num_tokens for s in batch if s.seq is long))
        _finish_step(batch)
    assert chunks == [15, 15, 10]


def test_max_num_seqs_and_priority_order() -> None:
    sched = _sched(max_num_seqs=2, max_background_seqs=None)  # worse priorities fill the spare room
    for rid, prio in [("low", 5), ("mid", 1), ("high", 0)]:
        sched.add(_seq(rid, 3, prio))
    batch = sched.schedule()
    assert [s.seq.request_id for s in batch] == ["high", "mid"]
    assert [s.request_id for s in sched.waiting] == ["low"]


def test_out_of_blocks_preempts_the_lowest_priority_and_recomputes_it() -> None:
    sched = _sched(num_blocks=4, max_num_batched_tokens=64, max_background_seqs=None)
    a, b = _seq("a", 8, priority=0), _seq("b", 7, priority=1)
    sched.add(a)
    sched.add(b)
    _finish_step(sched.schedule())  # a: 2 blocks + b: 2 blocks, pool full
    assert sched.block_manager.num_free_blocks == 0
    batch = sched.schedule()  # a needs a third block for its 9th token: b gives its blocks up
    assert [s.seq.request_id for s in batch] == ["a"]
    assert sched.num_preemptions == 1 and b.num_computed_tokens == 0 and b.block_table == []
    assert sched.waiting == [b] and b.num_tokens == 8  # prompt + its sampled token, recomputed later


def test_a_better_priority_takes_the_place_of_the_worst_running_sequence() -> None:
    sched = _sched(max_num_seqs=2)
    batch_lines = [_seq(f"line{i}", 3, priority=1) for i in range(3)]
    for seq in batch_lines:
        sched.add(seq)
    _finish_step(sched.schedule())  # two lines run, one waits
    live = _seq("live", 3, priority=0)
    sched.add(live)
    batch = sched.schedule()
    assert "live" in [s.seq.request_id for s in batch]  # at once, not after a line finishes
    assert sched.num_preemptions == 1 and len(sched.running) == 2
    assert [s.request_id for s in sched.waiting] == ["line1", "line2"]  # the later line gave its place up
    later = _seq("later", 3, priority=1)
    sched.add(later)
    _finish_step(sched.schedule())
    assert sched.num_preemptions == 1  # the same priority waits its turn


def test_worse_priorities_step_back_while_a_better_one_runs() -> None:
    """A live request beside batch lines: at most one line decodes in each of its steps, no line
    prefills or is admitted meanwhile, and they all go on once it is done."""
    sched = _sched(max_num_seqs=4, max_num_batched_tokens=64, max_background_seqs=1)
    lines = [_seq(f"line{i}", 3, priority=1) for i in range(3)]
    for seq in lines:
        sched.add(seq)
    _finish_step(sched.schedule())  # the three lines prefilled, now decoding
    waiting_line = _seq("line3", 20, priority=1)
    sched.add(waiting_line)
    live = _seq("live", 20, priority=0)
    sched.add(live)
    for _ in range(4):
        batch = sched.schedule()
        ids = [s.seq.request_id for s in batch]
        assert "live" in ids and len(ids) == 2, ids  # live (prefill, then decode) and one line
        assert all(s.num_tokens == 1 for s in batch if s.seq is not live)  # the line only decodes
        assert waiting_line.status.name == "WAITING"
        _finish_step(batch)
    sched.finish(live, "stop")
    batch = sched.schedule()
    assert {s.seq.request_id for s in batch} == {"line0", "line1", "line2", "line3"}
    assert sched.num_preemptions == 0


def test_blocks_held_by_lines_that_stepped_back_go_to_a_better_priority() -> None:
    """With no line allowed beside it and the cache full of paused lines, the live request takes
    the worst line's blocks (that line is recomputed later) instead of waiting forever."""
    sched = _sched(num_blocks=4, max_num_batched_tokens=64)  # max_background_seqs: 0 by default
    a, b = _seq("a", 8, priority=1), _seq("b", 7, priority=1)
    sched.add(a)
    sched.add(b)
    _finish_step(sched.schedule())  # the two lines hold all four blocks
    live = _seq("live", 3, priority=0)
    sched.add(live)
    batch = sched.schedule()
    assert [s.seq.request_id for s in batch] == ["live"]
    assert sched.num_preemptions == 1 and [s.request_id for s in sched.waiting] == ["b"]
    assert a.status.name == "RUNNING"  # the better line keeps its place, paused


def test_max_background_seqs_none_lets_worse_priorities_fill_the_step() -> None:
    sched = _sched(max_num_seqs=4, max_num_batched_tokens=64, max_background_seqs=None)
    lines = [_seq(f"line{i}", 3, priority=1) for i in range(3)]
    for seq in lines:
        sched.add(seq)
    _finish_step(sched.schedule())
    sched.add(_seq("live", 5, priority=0))
    assert len(sched.schedule()) == 4  # live and all three lines
