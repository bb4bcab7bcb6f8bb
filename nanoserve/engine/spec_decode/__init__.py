"""Speculative decoding: proposers (n-gram prompt lookup, a draft model) and exact verification.

- config.py: SpeculativeConfig (vLLM's `speculative_config`).
- ngram_proposer.py: drafts copied from the sequence's own earlier tokens (pure Python).
- draft_proposer.py: a small model with its own paged KV pool drafts k tokens in k lean steps.
- rejection_sampler.py: keeps the drafts the target agrees with (greedy) or accepts them by modified
  rejection sampling (sampled), so the output follows the distribution of speculation off.

The scheduler sees only `Sequence.spec_token_ids` (it schedules 1 + k tokens and reserves their
slots); the runner verifies them; the engine appends the accepted run and rolls the rest back.
"""
