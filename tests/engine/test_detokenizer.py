import time

import pytest
from tiny_models import EOS_ID, char_tokenizer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from nanoserve.engine.detokenizer import IncrementalDetokenizer, detokenize

TEXTS = [
    "Hello world, this is a test.",
    "naïve café déjà vu — über straße",
    "日本語のテキストと emoji 🙂🚀 mixed in",
    "  leading spaces\tand\ttabs\nnew lines\n\n",
    "ab" * 40,
]


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 / Llama-3 / Qwen style) trained on a few sentences; its tokens often
    end in the middle of a multi-byte character."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS * 3 + ["the quick brown fox jumps over the lazy dog"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def sentencepiece_like() -> PreTrainedTokenizerFast:
    """Llama-2 style: "▁" for spaces, byte fallback for characters outside the vocabulary, and a decoder
    that strips the leading space of the decoded string (so windows need left context)."""
    chars = sorted(set("".join(TEXTS)) - set(" 日本語のテキストと🙂🚀—"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", *chars, "▁t", "he", "▁the", "ll", "▁H"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("l", "l"), ("▁", "H")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# name -> (factory, covers only ASCII)
TOKENIZERS = {"byte_bpe": (byte_level_bpe, False), "sentencepiece": (sentencepiece_like, False),
              "char": (char_tokenizer, True)}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    factory, ascii_only = TOKENIZERS[request.param]
    tok = factory()
    tok.test_ascii_only = ascii_only
    return tok


def expected_output_text(tok, prompt_ids, output_ids) -> str:
    """What the output adds to the prompt's text when both are decoded together."""
    full = tok.decode(prompt_ids + output_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    prompt = tok.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert full.startswith(prompt)
    return full[len(prompt):]


def encodable(tok, text: str) -> str:
    return text.encode("ascii", "ignore").decode() if tok.test_ascii_only else text


@pytest.mark.parametrize("prompt", ["Q: ", "The answer is", "é"])
def test_incremental_text_matches_a_full_decode(tokenizer, prompt):
    for text in TEXTS:
        text = encodable(tokenizer, text)
        prompt_ids = tokenizer.encode(encodable(tokenizer, prompt), add_special_tokens=False)
        output_ids = tokenizer.encode(" " + text, add_special_tokens=False)
        detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        released = ""
        for tok_id in output_ids:
            delta = detok.add_token(tok_id)
            assert "\ufffd" not in delta, "half of a multi-byte character was released"
            released += delta
            assert released == detok.output_text
        assert detok.output_text == expected_output_text(tokenizer, prompt_ids, output_ids)
        assert detokenize(tokenizer, prompt_ids, output_ids) == detok.output_text


def test_byte_level_tokens_do_split_characters():
    """Guards the test above: the byte-level case really has tokens that end mid-character."""
    tok = byte_level_bpe()
    ids = tok.encode("🙂🚀 日本語", add_special_tokens=False)
    partial = [tok.decode(ids[:i]) for i in range(1, len(ids))]
    assert any(p.endswith("\ufffd") for p in partial)
    detok = IncrementalDetokenizer(tok, [])
    deltas = [detok.add_token(i) for i in ids]
    assert "" in deltas and "".join(deltas) == "🙂🚀 日本語"


def test_sentencepiece_keeps_the_space_of_the_first_output_word():
    tok = sentencepiece_like()
    prompt_ids = tok.encode("Hello", add_special_tokens=False)
    output_ids = tok.encode("the world", add_special_tokens=False)  # "▁the", "▁", "w", ...
    assert tok.decode(output_ids) == "the world"  # decoding alone loses the space
    assert detokenize(tok, prompt_ids, output_ids) == " the world"


def test_special_tokens_are_skipped_or_kept():
    tok = char_tokenizer()
    ids = tok.encode("hi", add_special_tokens=False) + [EOS_ID]
    assert detokenize(tok, [], ids) == "hi"
    assert detokenize(tok, [], ids, skip_special_tokens=False) == "hi</s>"
    detok = IncrementalDetokenizer(tok, [])
    assert [detok.add_token(i) for i in ids] == ["h", "i", ""]


def test_long_output_with_trimmed_window_and_speed():
    tok = byte_level_bpe()
    text = " ".join(TEXTS) * 150
    prompt_ids = tok.encode("Q:", add_special_tokens=False)
    output_ids = tok.encode(text, add_special_tokens=False)
    assert len(output_ids) > 4200  # long enough to trim the window's id list
    start = time.perf_counter()
    detok = IncrementalDetokenizer(tok, prompt_ids)
    for i in output_ids:
        detok.add_token(i)
    per_token_us = (time.perf_counter() - start) / len(output_ids) * 1e6
    assert detok.output_text == text
    assert len(detok._ids) < 4200
    assert per_token_us < 500, per_token_us  # O(1) per token; a full re-decode would grow with length


class SlowTokenizer:
    """A tokenizer without a Rust backend (only `decode`), like transformers' Python tokenizers."""

    def __init__(self, fast):
        self._fast = fast

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        return self._fast.decode(ids, skip_special_tokens=skip_special_tokens,
                                 clean_up_tokenization_spaces=clean_up_tokenization_spaces)


def test_slow_tokenizer_path_gives_the_same_text():
    fast = sentencepiece_like()
    prompt_ids = fast.encode("Hi", add_special_tokens=False)
    for text in TEXTS:
        ids = fast.encode(" " + text, add_special_tokens=False) + [fast.eos_token_id]
        assert detokenize(SlowTokenizer(fast), prompt_ids, ids) == detokenize(fast, prompt_ids, ids)
