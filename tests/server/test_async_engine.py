"""The async front against a fake engine: deltas, errors, abort, queue limit, crash, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from fake_engine import FakeEngine, expected_tokens

from nanoserve.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    EngineShuttingDownError,
    QueueFullError,
)
from nanoserve.errors import InvalidRequestError, PromptTooLongError
from nanoserve.sampling_params import SamplingParams


def run(coro_fn, engine: FakeEngine, **kwargs):
    async def main():
        front = AsyncLLMEngine(engine, **kwargs)
        front.start()
        try:
            return await coro_fn(front)
        finally:
            await front.shutdown(grace_s=0.0)

    return asyncio.run(asyncio.wait_for(main(), timeout=20))


def test_deltas_concatenate_to_the_full_output_per_index():
    engine = FakeEngine()

    async def go(front):
        text = {0: "", 1: ""}
        tokens = {0: [], 1: []}
        finish = {}
        async for out in front.generate("r1", "hello", SamplingParams(n=2, max_tokens=7)):
            for c in out.outputs:
                text[c.index] += c.text
                tokens[c.index] += c.token_ids
                if c.finish_reason:
                    finish[c.index] = c.finish_reason
        return text, tokens, finish

    text, tokens, finish = run(go, engine)
    prompt_ids = engine.tokenizer("hello").input_ids
    for i in (0, 1):
        assert tokens[i] == expected_tokens(prompt_ids, 7, index=i)
        assert text[i] == engine.tokenizer.decode(tokens[i])
    assert finish == {0: "length", 1: "length"}


def test_engine_rejection_is_raised_to_the_caller_and_others_carry_on():
    engine = FakeEngine(max_model_len=8)

    async def go(front):
        with pytest.raises(PromptTooLongError):
            await front.add_request("long", "x" * 20, SamplingParams(max_tokens=2))
        with pytest.raises(InvalidRequestError):
            await front.add_request("empty", [], SamplingParams(max_tokens=2))
        outs = [o async for o in front.generate("ok", "hi", SamplingParams(max_tokens=3))]
        return outs

    outs = run(go, engine)
    assert outs[-1].finished and sum(len(o.outputs[0].token_ids) for o in outs) == 3


def test_leaving_a_stream_early_aborts_the_request_in_the_engine():
    engine = FakeEngine(step_s=0.005)

    async def go(front):
        stream = await front.add_request("r", "abc", SamplingParams(max_tokens=1000))
        async with stream:
            await stream.__anext__()
        for _ in range(200):
            if not engine.requests:
                break
            await asyncio.sleep(0.005)
        return front.get_stats()

    stats = run(go, engine)
    assert engine.aborted == ["r"] and not engine.requests
    assert stats.num_running == 0


def test_queue_limit_raises_queue_full():
    engine = FakeEngine(max_num_seqs=1, step_s=0.005)

    async def go(front):
        running = await front.add_request("a", "abc", SamplingParams(max_tokens=1000))
        await running.__anext__()  # "a" is running: only "b" will wait
        waiting = await front.add_request("b", "abc", SamplingParams(max_tokens=1000))
        with pytest.raises(QueueFullError):
            await front.add_request("c", "abc", SamplingParams(max_tokens=1000))
        running.abort()
        waiting.abort()

    run(go, engine, max_num_queued_reqs=1)
    assert "c" not in engine.requests


def test_engine_crash_fails_every_stream_and_later_requests():
    engine = FakeEngine(step_s=0.002, crash_on_step=5)

    async def go(front):
        streams = [await front.add_request(f"r{i}", "abc", SamplingParams(max_tokens=100)) for i in range(3)]
        for s in streams:
            with pytest.raises(EngineDeadError, match="injected crash"):
                async for _ in s:
                    pass
        with pytest.raises(EngineDeadError):
            await front.add_request("late", "abc", SamplingParams(max_tokens=1))
        return front.dead_error

    assert isinstance(run(go, engine), EngineDeadError)


def test_a_dead_worker_is_seen_while_idle_and_the_engine_is_shut_down():
    """An idle engine whose worker dies: /health's dead_error within a poll, later requests fail."""
    from nanoserve.errors import EngineDeadError as CoreDeadError

    class WorkerDies(FakeEngine):
        worker_alive = True

        def check_health(self) -> None:
            if not self.worker_alive:
                raise CoreDeadError("tensor-parallel worker 1 (pid 1) died with exit code -9")

    engine = WorkerDies()

    async def go(front):
        stream = await front.add_request("r", "abc", SamplingParams(max_tokens=3))
        assert [o async for o in stream][-1].finished
        engine.worker_alive = False
        for _ in range(100):  # no request is running: only the idle poll can notice
            if front.dead_error is not None:
                break
            await asyncio.sleep(0.05)
        assert front.dead_error is not None and "died" in str(front.dead_error)
        assert not front.is_running and engine.shut_down
        with pytest.raises(EngineDeadError):
            await front.add_request("late", "abc", SamplingParams(max_tokens=1))

    run(go, engine)


def test_the_engine_is_shut_down_with_the_front():
    engine = FakeEngine()
    run(lambda front: asyncio.sleep(0), engine)
    assert engine.shut_down


def test_shutdown_lets_in_flight_requests_finish_within_the_grace_period():
    engine = FakeEngine(step_s=0.002)

    async def go(front):
        stream = await front.add_request("r", "abc", SamplingParams(max_tokens=20))
        shutting = asyncio.create_task(front.shutdown(grace_s=5.0))
        await asyncio.sleep(0)
        with pytest.raises(EngineShuttingDownError):
            await front.add_request("new", "abc", SamplingParams(max_tokens=1))
        outs = [o async for o in stream]
        await shutting
        return outs

    outs = run(go, engine)
    assert outs[-1].finished and outs[-1].outputs[-1].finish_reason == "length"


def test_shutdown_aborts_what_outlives_the_grace_period():
    engine = FakeEngine(step_s=0.005)

    async def go(front):
        stream = await front.add_request("r", "abc", SamplingParams(max_tokens=10_000))
        shutting = asyncio.create_task(front.shutdown(grace_s=0.1))
        with pytest.raises(EngineShuttingDownError, match="aborted"):
            async for _ in stream:
                pass
        await shutting
        return front.is_running

    assert run(go, engine) is False
    assert engine.aborted == ["r"]


def test_steps_run_off_the_event_loop():
    engine = FakeEngine(step_s=0.05)
    step_threads = set()
    real_step = engine.step

    def step():
        step_threads.add(threading.current_thread().name)
        return real_step()

    engine.step = step

    async def go(front):
        stream = await front.add_request("r", "abc", SamplingParams(max_tokens=4))
        # While a 50 ms step runs, the loop still gets through many 1 ms sleeps.
        ticks = 0
        consume = asyncio.create_task(asyncio.wait_for(_drain(stream), 5))
        while not consume.done():
            await asyncio.sleep(0.001)
            ticks += 1
        await consume
        return ticks

    ticks = run(go, engine)
    assert step_threads == {"nanoserve-engine"}
    assert ticks > 20


async def _drain(stream):
    async for _ in stream:
        pass


def test_finished_and_aborted_streams_are_forgotten():
    engine = FakeEngine(step_s=0.001)

    async def go(front):
        for i in range(5):
            _ = [o async for o in front.generate(f"done{i}", "abc", SamplingParams(max_tokens=2))]
        stream = await front.add_request("left", "abc", SamplingParams(max_tokens=1000))
        live_while_running = front.num_live_requests
        stream.abort()
        return live_while_running, front.num_live_requests, len(front._live)

    assert run(go, engine) == (1, 0, 0)


def final_output(engine: FakeEngine, prompt: str, params: SamplingParams):
    """The engine's own final (cumulative) completion, driven synchronously as the offline LLM does."""
    engine.add_request("final", prompt, params)
    outs = []
    while engine.has_unfinished_requests():
        outs = engine.step()
    return outs[-1].outputs[0]


# "hello" -> the fake generates "pqrstu...": "rsz" is begun but never completed, "tu" completes.
@pytest.mark.parametrize("include, final_text, seen_per_token", [
    (False, "pqrs", ["", "", "p", "pq", "pqr", "pqrs"]),  # two characters (len("rsz") - 1) held back
    (True, "pqrstu", ["p", "pq", "pqr", "pqrs", "pqrst", "pqrstu"]),  # nothing can be cut: nothing held
])
def test_streamed_text_with_stop_strings_concatenates_to_the_final_text(include, final_text, seen_per_token):
    params = SamplingParams(max_tokens=20, stop=["rsz", "tu"], include_stop_str_in_output=include)
    want = final_output(FakeEngine(), "hello", params)
    assert (want.text, want.finish_reason, want.stop_reason) == (final_text, "stop", "tu")

    async def go(front):
        return [o async for o in front.generate("r", "hello", params)]

    outs = run(go, FakeEngine())
    assert [len(o.outputs[0].token_ids) for o in outs] == [1] * 6  # one delta per token
    seen = list(itertools.accumulate(o.outputs[0].text for o in outs))
    assert seen == seen_per_token
    assert seen[-1] == want.text
    assert outs[-1].outputs[0].finish_reason == "stop" and outs[-1].outputs[0].stop_reason == "tu"
