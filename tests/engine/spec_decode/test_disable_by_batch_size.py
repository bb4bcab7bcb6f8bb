"""disable_by_batch_size: no drafting in a step once that many sequences run, drafting again below it."""

from __future__ import annotations

from spec_configs import draft

from nanoserve.engine.spec_decode.config import parse_speculative_config
from nanoserve.sampling_params import SamplingParams

SHORT = ["1+2=", "3+4=", "5+6="]  # answers of 1-2 tokens: done after a few steps
LONG = "sort 9 8 7 6 5 4 3 2 1 0 9 8 ="  # 23 answer tokens


def test_config_key_parses_and_validates():
    assert parse_speculative_config({**draft(3), "disable_by_batch_size": 4}).disable_by_batch_size == 4
    assert parse_speculative_config({**draft(3), "disable_by_batch_size": None}).disable_by_batch_size is None
    for bad in (0, -1, True, "4"):
        try:
            parse_speculative_config({**draft(3), "disable_by_batch_size": bad})
        except Exception as e:  # noqa: BLE001 - InvalidRequestError, with the key named
            assert "disable_by_batch_size" in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_drafting_stops_at_the_threshold_and_restarts_below(demo_llm):
    params = SamplingParams(temperature=0, max_tokens=40)
    off = demo_llm()
    ref = [o.outputs[0].token_ids for o in off.generate([*SHORT, LONG], params, use_tqdm=False)]
    llm = demo_llm(speculative_config={**draft(3), "disable_by_batch_size": 3})
    engine = llm.llm_engine
    for i, prompt in enumerate([*SHORT, LONG]):
        engine.add_request(str(i), prompt, params)
    trace = []  # (running before the step, disabled steps, drafts) after each step
    outs = {}
    while engine.has_unfinished_requests():
        running = engine.scheduler.num_running + engine.scheduler.num_waiting
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out.outputs[0].token_ids
        s = engine.get_stats()
        trace.append((running, s.spec_decode_num_disabled_steps, s.spec_decode_num_drafts))
    # Exact either way.
    assert [outs[str(i)] for i in range(4)] == ref
    busy = [t for t in trace if t[0] >= 3]
    assert busy and busy[-1][1] > 0, "no step skipped drafting with 4 sequences running"
    assert busy[-1][2] == 0, "drafts were verified while the batch was at the threshold"
    # Once the short ones finished, the long one drafts again: drafts grow, disabled steps do not.
    assert trace[-1][2] > 0
    assert trace[-1][1] == busy[-1][1]


def test_default_turns_off_at_4_and_null_never_does(demo_llm):
    default = {k: v for k, v in draft(3).items() if k != "disable_by_batch_size"}
    assert parse_speculative_config(default).disable_by_batch_size == 4
    llm = demo_llm(speculative_config={**draft(3), "disable_by_batch_size": None})
    llm.generate([*SHORT, LONG], SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    s = llm.llm_engine.get_stats()
    assert s.spec_decode_num_disabled_steps == 0 and s.spec_decode_num_drafts > 0
