"""LLM: vLLM's offline API. `LLM(model=DIR).generate(prompts, sampling_params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as SequenceABC
from typing import Any

from nanoserve.config import EngineArgs, engine_arg_names
from nanoserve.engine.llm_engine import LLMEngine
from nanoserve.errors import InvalidRequestError
from nanoserve.outputs import RequestOutput
from nanoserve.sampling_params import SamplingParams

PromptType = str | dict[str, Any]


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        """`kwargs` are EngineArgs' fields (dtype, max_model_len, block_size, ...), with its defaults."""
        unknown = sorted(set(kwargs) - engine_arg_names())
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword argument(s): {', '.join(unknown)} "
                            "(not fields of EngineArgs)")
        args = EngineArgs(model=str(model), **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(args)
        self._counter = itertools.count()

    def shutdown(self) -> None:
        """Stop the engine's worker processes (tensor_parallel_size > 1); idempotent. Also on `with` exit
        and at interpreter exit."""
        self.llm_engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: PromptType | SequenceABC[PromptType],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in input order."""
        if isinstance(prompts, str | dict):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise InvalidRequestError(
                    f"got {len(params_list)} SamplingParams for {len(prompts)} prompts", "sampling_params"
                )
        engine = self.llm_engine
        ids = []
        try:
            for prompt, params in zip(prompts, params_list, strict=True):
                rid = str(next(self._counter))
                engine.add_request(rid, prompt, params)
                ids.append(rid)
        except Exception:
            engine.abort_request(ids)
            engine.step()  # drain the abort outputs
            raise
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tok = self.get_tokenizer()
        if getattr(tok, "chat_template", None) is None:
            raise InvalidRequestError("the model's tokenizer has no chat template", "messages")
        prompts = []
        for conv in conversations:
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
            # The template already holds the special tokens: do not add another BOS.
            prompts.append({"prompt": text, "prompt_token_ids": tok.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        wanted = set(ids)
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            while len(done) < len(ids):
                for out in engine.step():
                    if out.finished and out.request_id in wanted:
                        done[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return [done[i] for i in ids]
