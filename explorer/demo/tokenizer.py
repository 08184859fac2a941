"""Byte-level BPE tokenizer with a chat template for the demo model.

Prompt format (exactly what :func:`format_chat` and the Jinja template produce)::

    <|system|>\\n{system}<|end|>\\n      (optional)
    <|user|>\\n{prompt}<|end|>\\n
    <|assistant|>\\n{response}<|end|>

``<|end|>`` is the eos token, so generation stops after one reply.
"""
from __future__ import annotations

from pathlib import Path

PAD, USER, ASSISTANT, SYSTEM, END = "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"
SPECIAL_TOKENS = [PAD, END, USER, ASSISTANT, SYSTEM]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def format_prompt(prompt: str, system: str | None = None) -> str:
    """Return the templated prompt text, ending with the generation prompt ``<|assistant|>\\n``."""
    s = f"{SYSTEM}\n{system}{END}\n" if system else ""
    return s + f"{USER}\n{prompt}{END}\n{ASSISTANT}\n"


def train_tokenizer(texts, out_dir, vocab_size: int = 3072):
    """Train a byte-level BPE on ``texts`` and save a ``PreTrainedTokenizerFast`` to ``out_dir``.

    Returns the loaded ``PreTrainedTokenizerFast`` (pad ``<|pad|>``, eos ``<|end|>``,
    with :data:`CHAT_TEMPLATE` saved in tokenizer_config.json).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=END,
                                   additional_special_tokens=[USER, ASSISTANT, SYSTEM])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir, save_jinja_files=False)  # template goes into tokenizer_config.json
    return fast


def corpus_texts(examples):
    """Yield the text of each example in chat format (for tokenizer training)."""
    for ex in examples:
        yield format_prompt(ex["prompt"], ex.get("system")) + ex["response"] + END
