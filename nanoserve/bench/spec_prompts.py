"""Chat prompt sets for `nanoserve bench spec --model CHAT_MODEL --prompt-set quote|open` (issue #13, #17).

`quote`: requests whose answer largely repeats the prompt (repeat a passage, fix its spelling, reverse a
list, copy code with a comment) -- where n-gram (prompt lookup) speculation should find its drafts.
`open`: open questions whose answer is new text -- where it should find little. The passages are our
own, 30-80 words each. Each prompt is one user message rendered through the model's chat template.
"""

from __future__ import annotations

from typing import Any

PASSAGES = [
    "The old lighthouse on the northern cliff has not been lit for forty years. Fishermen still point "
    "to it when they come home at dusk, and children climb the rusted stairs on summer afternoons to "
    "watch the ferries cross the bay. The town council talks every spring about painting it white "
    "again, but nobody has ever found the money.",
    "A good loaf of bread needs only flour, water, salt and time. Mix them in the evening, leave the "
    "dough covered on the kitchen table overnight, and shape it gently in the morning. Bake it in a "
    "very hot oven with a little steam for the first twenty minutes, then let it cool completely "
    "before you cut the first slice.",
    "Our team meets every Tuesday at ten to plan the week. Each person says what they finished, what "
    "they will work on next, and what is blocking them. The meeting should never take more than "
    "fifteen minutes, and any longer discussion moves to a separate call with only the people who "
    "need to be there.",
]

# The same passages with spelling mistakes to correct (the answer is the passage itself).
MISSPELT = [
    "The old lighthose on the northren cliff has not been lit for fourty years. Fishermen stil point "
    "to it when they come home at dusk, and childern climb the rusted stairs on sumer afternoons to "
    "watch the feries cross the bay.",
    "A good loaf of bred needs only flower, water, salt and time. Mix them in the evenning, leave the "
    "dough coverd on the kitchin table overnite, and shape it gentley in the morning.",
    "Our team meets evry Tuesday at ten to plan the weak. Each person says what they finshed, what "
    "they will work on next, and what is blocking them. The meating should never take more than "
    "fiftean minutes.",
]

LISTS = [
    "apples, bread, cheese, tomatoes, olive oil, rice, black pepper, green tea, lemons, onions",
    "Monday: laundry; Tuesday: groceries; Wednesday: dentist; Thursday: call grandmother; "
    "Friday: pay the rent; Saturday: clean the garage; Sunday: rest",
    "Paris, Berlin, Madrid, Rome, Vienna, Prague, Warsaw, Lisbon, Dublin, Athens, Oslo, Helsinki",
]

CODE = [
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
    "    return total / len(values)",
    "def is_palindrome(text):\n    cleaned = [c.lower() for c in text if c.isalnum()]\n"
    "    return cleaned == cleaned[::-1]",
    "def count_words(text):\n    counts = {}\n    for word in text.split():\n"
    "        counts[word] = counts.get(word, 0) + 1\n    return counts",
]

OPEN = [
    "What are three good habits for staying healthy?",
    "Why is the sky blue? Explain it simply.",
    "Give me some ideas for a weekend trip with children.",
    "What should I consider when choosing a first programming language?",
    "Write a short story about a cat who learns to swim.",
    "How do plants make their food?",
]


def quote_prompts() -> list[str]:
    """12 user messages whose answers largely repeat the prompt."""
    out = [f"Repeat this text exactly:\n\n{p}" for p in PASSAGES]
    out += [f"Correct the spelling in this text and write it out in full:\n\n{p}" for p in MISSPELT]
    out += [f"Put this list in reverse order:\n\n{x}" for x in LISTS]
    out += [f"Copy this code and add a comment above each line:\n\n```python\n{c}\n```" for c in CODE]
    return out


PROMPT_SETS = {"quote": quote_prompts, "open": lambda: list(OPEN)}


def prompt_set(name: str) -> list[str]:
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]()


def render_chat_prompts(model_dir: str, messages: list[str]) -> list[dict[str, Any]]:
    """Each user message through the model's chat template, as engine prompts (token ids, no extra BOS)."""
    from nanoserve.errors import InvalidRequestError
    from nanoserve.model.loader import load_tokenizer

    tok = load_tokenizer(model_dir)
    if getattr(tok, "chat_template", None) is None:
        raise InvalidRequestError(f"--prompt-set needs a chat model; {model_dir} has no chat template",
                                  "model")
    prompts = []
    for m in messages:
        text = tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                       add_generation_prompt=True)
        prompts.append({"prompt": text, "prompt_token_ids": tok.encode(text, add_special_tokens=False)})
    return prompts
