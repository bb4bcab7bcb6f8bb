"""Runs llama.cpp's own `convert_hf_to_gguf.py` (a subprocess of `llamacpp_gguf.convert`), optionally with a
placeholder vocabulary.

    python llamacpp_convert.py CONVERTER_PY [--placeholder-vocab] -- MODEL_DIR --outtype T --outfile F

The tensors are converted by the converter unchanged. `--placeholder-vocab` is for checkpoints whose
tokenizer llama.cpp does not know (the demo model's and `--random-model`'s word-level tokenizers): the
GGUF then gets an SPM-typed list of the same size, token i = "<i>", so llama.cpp loads it; the benchmarks
feed token ids, so that vocabulary never tokenizes anything. This file imports nothing of nanoserve: it
runs by path in a fresh interpreter, with the converter's folder first on sys.path.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def _placeholder_vocab(self) -> None:
    """set_vocab of every converter model class: "<i>" tokens, bos/eos/pad from config.json."""
    n = int(self.hparams["vocab_size"])
    w = self.gguf_writer
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"<{i}>" for i in range(n)])
    w.add_token_scores([0.0] * n)
    w.add_token_types([1] * n)  # NORMAL
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("pad_token_id", w.add_pad_token_id)):
        value = self.hparams.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            add(value)
    w.add_add_bos_token(False)


def main(argv: list[str]) -> None:
    if "--" not in argv or len(argv) < 2:
        raise SystemExit(__doc__)
    split = argv.index("--")
    converter, options, converter_args = Path(argv[0]), argv[1:split], argv[split + 1 :]
    sys.path.insert(0, str(converter.parent))
    if (converter.parent / "gguf-py").is_dir():  # what the converter would put first itself
        sys.path.insert(1, str(converter.parent / "gguf-py"))
    if "--placeholder-vocab" in options:
        import conversion  # the converter's model classes (llama.cpp >= mid-2025 layout)

        original = conversion.get_model_class

        def get_model_class(*args, **kwargs):
            cls = original(*args, **kwargs)
            cls.set_vocab = _placeholder_vocab  # this process converts one model and exits
            return cls

        conversion.get_model_class = get_model_class
    sys.argv = [str(converter), *converter_args]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
