"""MoEModel: a loaded causal LM with its discovered MoE layers, chat template and lock."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from explorer.core.cache import ModelCache
from explorer.core.chat import check_system, merge_system
from explorer.core.control import RouteControl, defended
from explorer.core.defaults import (
    HUB_PROBE_SECONDS,
    MAX_TARGET_CHARS,
    MAX_TARGET_TOKENS,
    ONE_GPU_SHARE,
)
from explorer.core.errors import InputError, ModelLoadError, RouteError, one_line
from explorer.core.experts_quant import weight_bytes
from explorer.core.layers import LayerHandles, ModelInfo, decoder_layers, discover_layers
from explorer.core.locks import FairRLock
from explorer.core.paths import DEMO_MODEL_DIR
from explorer.core.prequantized import Prequantized, loaded, plan_load
from explorer.core.prompt import Prompt
from explorer.core.quantize import (
    BNB_MODES,
    EXPERT_MODES,
    FP8_MODE,
    bitsandbytes_config,
    check_quantize,
    fp8_block_size,
    fp8_config,
    fp8_refusal,
    prequantized_method,
    quantization_of,
    quantize_experts_of,
    skip_modules,
)
from explorer.core.route import Route

#: How the operator's prompt cap is named in messages (the setting that sets it).
PROMPT_CAP_NAME = "EXPLORER_MAX_PROMPT_TOKENS"
#: What :meth:`MoEModel.system_placement` renders to find a template's system turn.
_SYSTEM_MARKER = "Marker system prompt 7f3a."
#: What :attr:`MoEModel.end_of_turn_id` renders as an assistant reply to find its end.
_REPLY_MARKER = "Marker reply 7f3a."
#: The chat-template variable that switches a thinking block on or off (Qwen3's and others'
#: templates read it); :meth:`MoEModel.template`'s ``thinking`` sets it.
THINKING_VARIABLE = "enable_thinking"


def _render(tokenizer, msgs: list[dict], **kw) -> str | None:
    """``msgs`` through the chat template as text, or None when the template refuses."""
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, **kw)
    except Exception:  # noqa: BLE001 - templates raise their own errors
        return None
    return text if isinstance(text, str) else None


def _probe_system_placement(tokenizer) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return "merged"
    msgs = [{"role": "system", "content": _SYSTEM_MARKER}, {"role": "user", "content": "Hi."}]
    text = _render(tokenizer, msgs, add_generation_prompt=True)  # None: refuses a system turn
    return "role" if text is not None and _SYSTEM_MARKER in text else "merged"


def _probe_thinking(tokenizer) -> bool | None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    msgs = [{"role": "user", "content": "Hi."}]
    on, off, default = (_render(tokenizer, msgs, add_generation_prompt=True, **kw) for kw in
                        ({THINKING_VARIABLE: True}, {THINKING_VARIABLE: False}, {}))
    if on is None or off is None or on == off or default not in (on, off):
        return None
    return default == on


def _special_ids(tokenizer) -> set[int]:
    """The ids of ``tokenizer``'s special tokens: the named ones (BOS, EOS, pad, ...) and
    every added token marked special (role markers and the like)."""
    out = {int(i) for i in getattr(tokenizer, "all_special_ids", None) or []}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    return out


def _probe_end_of_turn(tokenizer) -> int | None:
    # The assistant's reply as the conversation's last message (as in training data: e.g.
    # gpt-oss's template ends it with <|return|> there, and with <|end|> inside a history).
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    msgs = [{"role": "user", "content": "Hi."},
            {"role": "assistant", "content": _REPLY_MARKER}]
    text = _render(tokenizer, msgs, add_generation_prompt=False)
    if text is None or _REPLY_MARKER not in text:
        return None
    tail = text[text.rindex(_REPLY_MARKER) + len(_REPLY_MARKER):]
    try:
        ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode the tail: none found
        return None
    special = _special_ids(tokenizer)
    for i in ids:
        if i in special:
            return int(i)
        if tokenizer.decode([i]).strip():  # text after the reply comes first: no marker
            return None
    return None


def _token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes token ``token_id`` stands for, where its vocabulary entry shows them: a
    byte-fallback token (``<0xF0>``) or a byte-level BPE token (GPT-2's byte-to-character
    table, as Qwen's, DeepSeek's and gpt-oss's tokenizers use); None otherwise."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
        return bytes([int(piece[3:5], 16)])
    table = _byte_decoder()
    if all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return None


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    return {c: b for b, c in bytes_to_unicode().items()}


class MoEModel:
    """A causal LM with MoE layers, ready for routing record and intervention.

    Use :func:`load_model` to get one, or wrap an existing transformers model with
    ``MoEModel(model, tokenizer, name)``. ``lock`` serialises model use between threads.
    ``prequantized``: what :func:`load_model` loaded from a pre-quantized checkpoint
    (:mod:`explorer.core.prequantized`), recorded in :attr:`info`.
    """

    def __init__(self, model, tokenizer=None, name: str = "model", *,
                 max_prompt_tokens: int | None = None,
                 prequantized: Prequantized | None = None):
        if max_prompt_tokens is not None and (not isinstance(max_prompt_tokens, int)
                                              or max_prompt_tokens <= 0):
            raise InputError(f"{PROMPT_CAP_NAME} must be a positive integer, "
                             f"got {max_prompt_tokens!r}")
        self.model = model.eval()
        self.prompt_cap = max_prompt_tokens  # the operator's cap on prompt tokens (or None)
        self.tokenizer = tokenizer
        self.name = name
        self.lock = FairRLock()  # first come, first served: see explorer.core.locks
        self.cache = ModelCache()  # this model's memo tables (see explorer.core.cache)
        found = discover_layers(model)
        self.handles: list[LayerHandles] = [x for x in found if isinstance(x, LayerHandles)]
        layers = [x.info if isinstance(x, LayerHandles) else x for x in found]
        layers_list = decoder_layers(model)
        self.base = next(m for m in model.modules()
                         if getattr(m, "layers", None) is layers_list
                         or getattr(m, "blocks", None) is layers_list
                         or getattr(m, "h", None) is layers_list)
        import transformers
        template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        p = next(model.parameters())
        self.info = ModelInfo(
            name=name, model_type=getattr(model.config, "model_type", ""),
            num_layers=len(layers), layers=layers, device=str(p.device),
            dtype=str(p.dtype).replace("torch.", ""),
            revision=getattr(model.config, "_commit_hash", None),
            transformers_version=transformers.__version__,
            chat_template_hash=(hashlib.sha256(template.encode()).hexdigest()[:16]
                                if isinstance(template, str) else None),
            parameters=parameter_count(model),
            quantization=quantization_of(model) or (prequantized.format if prequantized else None),
            dequantized=prequantized.dequantized if prequantized else None,
            weight_bytes=weight_bytes(model))

    # -- basics -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def moe_layers(self) -> list[int]:
        return self.info.moe_layers

    def handle(self, layer: int) -> LayerHandles:
        for h in self.handles:
            if h.info.index == layer:
                return h
        raise RouteError(f"layer {layer} is not an MoE layer (MoE layers: {self.moe_layers})")

    def control(self, routes=None, record: bool = False, **kw) -> RouteControl:
        """A :class:`RouteControl` context manager for this model (see its docs)."""
        return RouteControl(self, routes, record=record, **kw)

    def defended(self, defense: Route | None):
        """``with moe.defended(defense):`` every route applied in the block (in this
        thread) is composed with ``defense``, validated against this model first; see
        :func:`explorer.core.control.defended`. The model itself is not changed."""
        if defense is not None:
            defense.validate(self.info)
        return defended(defense)

    # -- text -------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ModelLoadError("this model has no tokenizer; pass token ids instead")
        return self.tokenizer

    def template(self, prompt: str, system: str | None = None, *,
                 thinking: bool | None = None) -> str:
        """The chat-templated text for one user message with the generation prompt.

        ``system`` (a system prompt; None or blank: none) goes in the template's system
        turn where the template has one (:attr:`system_placement` ``"role"``); a template
        without a system role (e.g. Mixtral's, which refuses one) and a model without a
        template (raw prompts) get it merged into the user turn instead, ``system``, a
        blank line, then ``prompt`` (``"merged"``), as the field does for such models.

        ``thinking``: for a template with a thinking switch (:attr:`thinking_default` not
        None, e.g. Qwen3's ``enable_thinking``), True or False renders the generation
        prompt with thinking on or off (Qwen3's "off" adds an empty thinking block); None
        keeps the template's default. ``InputError`` for True or False on a model whose
        template has no switch. The mode changes positions: :meth:`provenance` records it.
        """
        tok = self._need_tokenizer()
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty")
        system = check_system(system)
        self.resolve_thinking(thinking)
        if system is not None and self.system_placement == "merged":
            prompt, system = merge_system(system, prompt), None
        if not getattr(tok, "chat_template", None):
            return prompt  # base models: the raw prompt (with a merged system prompt)
        msgs = ([{"role": "system", "content": system}] if system is not None else [])
        msgs.append({"role": "user", "content": prompt})
        kw = {THINKING_VARIABLE: thinking} if thinking is not None else {}
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kw)

    @property
    def system_placement(self) -> str:
        """Where :meth:`template` puts a system prompt: ``"role"`` (the chat template's
        own system turn) or ``"merged"`` (before the user message, for templates that
        refuse or drop a system turn and for models without a chat template). Probed once
        per model by rendering a marker system prompt."""
        cached = self.cache.system_placement
        if cached is None:
            cached = self.cache.system_placement = _probe_system_placement(self.tokenizer)
        return cached

    @property
    def thinking_default(self) -> bool | None:
        """The default of the chat template's thinking switch (the ``enable_thinking``
        variable: Qwen3's template, for one, generates a thinking block first unless it is
        False): True or False, or None when the template has no such switch (rendering
        with it on and off gives the same text) or the model has no template. Probed once
        per model."""
        probes = self.cache.template_probes
        if "thinking" not in probes:
            probes["thinking"] = _probe_thinking(self.tokenizer)
        return probes["thinking"]

    def resolve_thinking(self, thinking: bool | None = None) -> bool | None:
        """The thinking mode a prompt is templated with for ``thinking`` (see
        :meth:`template`): ``thinking`` itself, or :attr:`thinking_default` for None (None
        for a template without a switch). ``InputError`` for anything but None, True or
        False, and for True or False where the template has no switch."""
        if thinking is not None and not isinstance(thinking, bool):
            raise InputError(f"thinking must be True, False or None, got {thinking!r}")
        default = self.thinking_default
        if thinking is not None and default is None:
            raise InputError(f"{self.name}'s chat template has no thinking switch "
                             f"({THINKING_VARIABLE}); leave thinking unset")
        return default if thinking is None else thinking

    def provenance(self, system: str | None = None, *,
                   thinking: bool | None = None) -> dict[str, Any]:
        """The model's provenance (:meth:`ModelInfo.provenance`) plus ``system`` (and how
        the template placed it) when a system prompt was used, and ``thinking`` (the mode
        used, the template's default included) where the template has a thinking switch:
        what routes, traces and results record in their ``info``."""
        out = dict(self.info.provenance())
        system = check_system(system)
        if system is not None:
            out.update(system=system, system_placement=self.system_placement)
        thinking = self.resolve_thinking(thinking)
        if thinking is not None:
            out["thinking"] = thinking
        return out

    def prepare(self, prompt: "str | Prompt", system: str | None = None, *,
                thinking: bool | None = None) -> Prompt:
        """``prompt`` templated (with ``system`` and ``thinking``, as in :meth:`template`)
        and tokenised once: a :class:`~explorer.core.prompt.Prompt`. Prepared prompts are
        remembered per model (text, system prompt and thinking mode), so preparing the same
        text again costs a lookup. A :class:`Prompt` is returned as it is when it was
        prepared for this model (``system`` and ``thinking``, when given, must be the ones
        it was prepared with); one prepared for another model is prepared again from its
        text. Raises ``InputError`` as :meth:`encode` does."""
        if isinstance(prompt, Prompt):
            if system is not None and check_system(system) != prompt.system:
                raise InputError("the prompt was prepared with another system prompt")
            if thinking is not None and thinking != prompt.thinking:
                raise InputError("the prompt was prepared with another thinking mode")
            if prompt.model == self.name:
                return prompt
            prompt, system, thinking = prompt.text, prompt.system, prompt.thinking
        system = check_system(system)
        mode = self.resolve_thinking(thinking)
        if not isinstance(prompt, str):
            raise InputError(f"the prompt must be text, got {type(prompt).__name__}")

        def build() -> Prompt:
            ids = self._encode_text(prompt, system, thinking)
            return Prompt(text=prompt, ids=tuple(ids), system=system, thinking=mode,
                          model=self.name, info=self.provenance(system, thinking=thinking))
        return self.cache.memo(self.cache.prompts, (prompt, system, mode), build, limit=1024)

    def encode(self, prompt: "str | Prompt", system: str | None = None, *,
               thinking: bool | None = None) -> list[int]:
        """Token ids of the templated prompt (special tokens come from the template;
        ``system`` and ``thinking`` as in :meth:`template`): :meth:`prepare`'s ids.

        Raises ``InputError`` when the templated prompt is longer than
        :attr:`max_prompt_tokens` (the model's context or the operator's cap).
        """
        return list(self.prepare(prompt, system, thinking=thinking).ids)

    def _encode_text(self, prompt: str, system: str | None, thinking: bool | None) -> list[int]:
        cap, why = self._prompt_cap()
        text = self.template(prompt, system, thinking=thinking)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the prompt is not valid Unicode text (lone surrogates)") from None
        ids = list(self._need_tokenizer()(text, add_special_tokens=False)["input_ids"])
        if cap is not None and len(ids) > cap:
            raise InputError(f"the prompt is too long: {len(ids)} tokens with the chat "
                             f"template, the limit is {cap} ({why})")
        return ids

    def target_ids(self, target: str) -> list[int]:
        """Token ids of a target answer opening, as every method that scores one takes
        them (no special tokens): the one home of the target's checks. ``InputError`` when
        it is not text, empty, longer than :data:`~explorer.core.defaults.MAX_TARGET_CHARS`
        characters, without tokens or longer than
        :data:`~explorer.core.defaults.MAX_TARGET_TOKENS` tokens."""
        if not isinstance(target, str):
            raise InputError(f"the target must be text, got {type(target).__name__}")
        if not target.strip():
            raise InputError("the target answer is empty")
        if len(target) > MAX_TARGET_CHARS:
            raise InputError(f"the target has {len(target)} characters; at most "
                             f"{MAX_TARGET_CHARS} are accepted")
        ids = list(self._need_tokenizer()(target, add_special_tokens=False)["input_ids"])
        if not ids:
            raise InputError("the target answer has no tokens")
        if len(ids) > MAX_TARGET_TOKENS:
            raise InputError(f"the target has {len(ids)} tokens; at most "
                             f"{MAX_TARGET_TOKENS} are accepted")
        return ids

    # -- length limits ----------------------------------------------------------------
    @property
    def text_config(self):
        """The decoder's config (multimodal configs nest it), else the top-level config."""
        cfg = self.model.config
        get = getattr(cfg, "get_text_config", None)
        try:
            return get() if callable(get) else cfg
        except Exception:  # noqa: BLE001 - unusual configs: fall back to the top level
            return cfg

    @property
    def context_length(self) -> int | None:
        """The model's context in tokens: ``max_position_embeddings``, or the tokenizer's
        ``model_max_length`` when that is smaller and sane; None when neither is known."""
        cfg = self.model.config
        text_cfg = self.text_config
        n = getattr(text_cfg, "max_position_embeddings", None) or \
            getattr(cfg, "max_position_embeddings", None)
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
        t = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(t, int) and not isinstance(t, bool) and 0 < t < 10_000_000 and \
                (n is None or t < n):
            n = t
        return n

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest templated prompt :meth:`encode` accepts: the smaller of
        :attr:`context_length` and the operator's cap (``max_prompt_tokens`` of
        :func:`load_model`, the ``EXPLORER_MAX_PROMPT_TOKENS`` setting) when set."""
        return self._prompt_cap()[0]

    def _prompt_cap(self) -> tuple[int | None, str]:
        ctx = self.context_length
        cap, why = ctx, "the model's context"
        if self.prompt_cap is not None and (cap is None or self.prompt_cap < cap):
            cap, why = self.prompt_cap, PROMPT_CAP_NAME
        return cap, why

    def token_strings(self, ids) -> list[str]:
        """One string per token id (the heatmap's labels): the tokenizer's decoding of
        the token alone. A token that holds only part of a character's UTF-8 bytes (a
        byte-level BPE piece, a byte-fallback token) decodes alone to U+FFFD; it shows its
        bytes instead, the undecodable ones as ``\\xNN`` escapes, so that different
        pieces look different and the pieces together are the text, byte for byte."""
        tok = self._need_tokenizer()
        out = []
        for i in ids:
            text = tok.decode([i])
            if "\ufffd" in text:
                raw = _token_bytes(tok, i)
                if raw is not None:
                    text = raw.decode("utf-8", errors="backslashreplace")
            out.append(text)
        return out

    def decode(self, ids) -> str:
        return self._need_tokenizer().decode(list(ids), skip_special_tokens=True)

    @property
    def end_of_turn_id(self) -> int | None:
        """The token the chat template ends an assistant turn with (Qwen3's
        ``<|im_end|>``, DeepSeek-V3's ``<｜end▁of▁sentence｜>``, gpt-oss's ``<|return|>``):
        the first special token after a rendered assistant reply that is the conversation's
        last message; None without a template or where text comes first. Probed once."""
        probes = self.cache.template_probes
        if "end_of_turn" not in probes:
            probes["end_of_turn"] = _probe_end_of_turn(self.tokenizer)
        return probes["end_of_turn"]

    @property
    def eos_ids(self) -> list[int]:
        """The token ids that end a generation: the generation config's ``eos_token_id``
        (else the tokenizer's), then :attr:`end_of_turn_id` where they lack it (a
        generation config may name only ``<|endoftext|>``, as Qwen3's base checkpoints'
        do, while their chat template ends the turn with ``<|im_end|>``)."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        out = [] if eos is None else \
            [int(x) for x in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
        eot = self.end_of_turn_id
        if eot is not None and eot not in out:
            out.append(eot)
        return out


def parameter_count(model) -> int:
    """The model's parameter count. A bitsandbytes 4-bit weight packs two values a byte
    (its ``numel`` is half); its ``quant_state.shape`` is the unpacked shape. Integer
    routed experts (``--quantize int8-experts|int4-experts``) are buffers, counted by the
    weights they stand for."""
    from explorer.core.experts_quant import logical_parameters
    n = logical_parameters(model)
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        n += math.prod(int(d) for d in shape) if shape is not None else p.numel()
    return n


def _resolve(name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    if name_or_path is None or str(name_or_path) in ("", "demo"):
        if not (DEMO_MODEL_DIR / "config.json").exists():
            raise ModelLoadError(f"the bundled demo model is missing from {DEMO_MODEL_DIR}; "
                                 "rebuild it with `python -m explorer.demo build`")
        return str(DEMO_MODEL_DIR), "demo"
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{s} is not a model folder (no config.json)")
        return str(p), s
    if s.startswith((".", "/", "~")) or s.count("/") > 1 or s.endswith(".json"):
        raise ModelLoadError(f"model path {s} does not exist")
    return s, s


def _read_config(path: str, name: str, trust_remote_code: bool, offline: str | None):
    """The config at ``path`` (a folder or hub id; ``offline``: why the hub cannot be
    reached, then the local cache only), or one-line :class:`ModelLoadError`."""
    from transformers import AutoConfig
    local = {"local_files_only": True} if offline else {}
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **local)
    except Exception as exc:  # noqa: BLE001 - turn any loader failure into one message
        if offline:
            raise ModelLoadError(f"cannot load {name}: the Hugging Face hub is unreachable "
                                 f"({offline}) and {name} is not in the local cache") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load a model config from {name}: {first}") from None


def read_config(name_or_path: str | os.PathLike | None = None, *,
                trust_remote_code: bool = False):
    """A model's config and nothing else (no weight is read): the bundled demo model's
    (None or ``"demo"``), a local folder's ``config.json``, or a hub id's config file (with
    the hub unreachable: the local cache only, decided at once by :func:`hub_unreachable`).
    Returns ``(config, name)``; raises :class:`ModelLoadError` with one line."""
    path, name = _resolve(name_or_path)
    offline = None if Path(path).exists() else hub_unreachable()
    return _read_config(path, name, trust_remote_code, offline), name


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face hub cannot be reached, in one line, or None when it answers (any
    HTTP answer) within ``timeout`` seconds. Offline mode (the hub client's
    ``HF_HUB_OFFLINE``) answers at once without asking."""
    from huggingface_hub import constants, get_session
    if constants.HF_HUB_OFFLINE:
        return "offline mode (HF_HUB_OFFLINE=1)"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "unreachable"
        return f"{constants.ENDPOINT}: {one_line(exc) or type(exc).__name__}"
    return None


def cpu_experts_implementation(override: str | None = None) -> str:
    """The experts kernel used on CPU: ``explorer_cpu`` (:mod:`explorer.core.experts_cpu`:
    each expert's tokens padded to a row-invariant height, all experts in one ``grouped_mm``
    per projection, so that a token's output does not depend on the rest of its call)
    where torch has ``grouped_mm``, else ``eager``.

    Measured on the demo model (1 thread): ``grouped_mm`` made an F-SOUR search 22% faster
    (fast engine) and 25% faster (reference) than ``eager``, with the same route and
    log-probs, and single MoE calls of 1-100 tokens 1.3-1.9x faster; the one-token path
    makes generation another 11% faster with the same tokens. ``override`` (eager |
    grouped_mm | explorer_cpu; the ``EXPLORER_EXPERTS_IMPL`` setting) wins.
    """
    from explorer.core.experts_cpu import register
    name = register()
    if override:
        return override
    return name if hasattr(torch.nn.functional, "grouped_mm") else "eager"


def load_model(name_or_path: str | None = None, device: str = "auto", dtype=None,
               trust_remote_code: bool = False, device_map: str | None = None, *,
               max_prompt_tokens: int | None = None, quantize: str | None = None,
               experts_impl: str | None = None,
               offload_folder: str | os.PathLike | None = None) -> MoEModel:
    """Load an MoE causal LM: the bundled demo model (default), a local folder or a hub id.

    ``device="auto"`` picks cuda when available, else cpu; ``dtype`` defaults to bfloat16
    on GPU and float32 on CPU. On GPU a model too large for one device is spread with
    ``device_map="auto"`` (accelerate). ``trust_remote_code`` is off unless asked for.
    ``max_prompt_tokens``: an operator's cap on templated prompt tokens (see
    :attr:`MoEModel.max_prompt_tokens`). ``quantize``: ``"8bit"`` or ``"4bit"`` loads the
    weights through bitsandbytes (a CUDA GPU and the ``quantize`` extra needed; routers and
    the output layer stay in ``dtype``, and in transformers 5.24 so do the fused routed
    experts); ``"fp8"`` loads them as fine-grained FP8, routed experts included (a GPU of
    compute capability >= 8.9); ``"int8-experts"`` / ``"int4-experts"`` store the routed
    experts as integers after loading, on any device (see :mod:`explorer.core.quantize`);
    what cannot run is refused with a :class:`ModelLoadError` before any weight is read.
    ``experts_impl`` (keyword-only, for contributors): the CPU experts kernel instead of
    :func:`cpu_experts_implementation`'s choice. ``device_map`` (accelerate's: ``"auto"`` or
    a dict of module name to device, ``"cpu"`` or ``"disk"``) with ``offload_folder`` (where
    ``"disk"`` weights go) offloads part of a model too big for the device; route control
    works on it unchanged (see docs/performance.md for what it costs). A pre-quantized
    checkpoint (FP8, MXFP4, compressed-tensors) is loaded as :mod:`explorer.core.prequantized`
    says.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, name = _resolve(name_or_path)
    quantize = check_quantize(quantize, device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no GPU is available")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    # a hub id with the hub unreachable: the local cache only, at once (the hub client's
    # retries took 24-30 s to say so)
    offline = None if Path(path).exists() else hub_unreachable()
    local = {"local_files_only": True} if offline else {}
    config = _read_config(path, name, trust_remote_code, offline)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, **local}
    # transformers 5.25 swaps in hub kernels by default (downloaded; a kernel may replace a
    # block's forward, router call included): off, as in 5.24, so routers stay hookable
    kwargs["use_kernels"] = False
    if device == "cpu":
        kwargs["experts_implementation"] = "eager"  # every model accepts it; switched below
    meta = None
    if quantize is not None:
        method = prequantized_method(config)
        if method is not None:
            raise ModelLoadError(f"{name} is already quantized ({method}); --quantize "
                                 f"applies to full-precision checkpoints: load it without")
        meta = meta_model(config, trust_remote_code)
        if meta is None:
            raise ModelLoadError(f"{name} is not a causal language model this version of "
                                 f"transformers can build, so it cannot be quantized")
        try:
            skip = skip_modules(meta)
        except RouteError as exc:
            raise ModelLoadError(f"{name}: {exc}") from None
        if quantize in BNB_MODES:
            kwargs["quantization_config"] = bitsandbytes_config(quantize, skip=skip,
                                                                compute_dtype=dtype)
        elif quantize == FP8_MODE:
            why = fp8_refusal(meta)
            if why is not None:
                raise ModelLoadError(f"{name} cannot be loaded with --quantize fp8: {why}; "
                                     f"use --quantize int8-experts or int4-experts")
            kwargs["quantization_config"] = fp8_config(skip=skip, block=fp8_block_size(meta))
    experts_mode = quantize in EXPERT_MODES  # quantized after loading, before .to(device)
    if device.startswith("cuda") and device_map is None and not experts_mode and \
            _too_big(config, dtype, meta):
        device_map = "auto"
    plan = plan_load(config, device, name) if quantize is None else None
    if plan is not None:
        kwargs.update(plan.kwargs)  # pre-quantized checkpoints: dequantized where needed
    if quantize is not None and not experts_mode and device_map is None:
        device_map = device  # bitsandbytes and FP8 place weights while loading; no .to()
    if device_map is not None:
        kwargs["device_map"] = device_map
    if isinstance(device_map, dict) and "disk" in device_map.values() and offload_folder is None:
        raise ModelLoadError(f"the device map of {name} offloads weights to disk: pass an "
                             f"offload folder for them (offload_folder)")
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - turn any loader failure into one message
        first = one_line(exc)
        if quantize is not None:  # bitsandbytes' backend, offload or version checks
            raise ModelLoadError(f"cannot load {name} with --quantize {quantize}: "
                                 f"{first}") from None
        if isinstance(exc, ValueError):
            raise ModelLoadError(f"{name} is not a causal language model this version of "
                                 f"transformers can load: {first}") from None
        raise ModelLoadError(f"cannot load {name}: {first}") from None
    if experts_mode and not quantize_experts_of(model, quantize):
        raise ModelLoadError(f"{name} has no fused routed experts that --quantize {quantize} "
                             f"can convert; load it without --quantize")
    if device_map is None:
        model = model.to(device)
    impl = cpu_experts_implementation(experts_impl) if device == "cpu" else "eager"
    if impl != "eager" and hasattr(model, "set_experts_implementation"):
        try:
            model.set_experts_implementation(impl)
        except (ValueError, NotImplementedError, KeyError):  # dense models, undecorated experts
            pass
    if device == "cpu" and getattr(model.config, "_attn_implementation", None) == "sdpa":
        from explorer.core.attention_cpu import register as register_attention
        try:  # SDPA with no query block of 1-3 rows (see explorer.core.attention_cpu)
            model.set_attn_implementation(register_attention())
        except (ValueError, NotImplementedError, KeyError, ImportError):
            pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                  **local)
    except Exception:  # noqa: BLE001 - a model without tokenizer is still inspectable by ids
        tokenizer = None
    try:
        return MoEModel(model, tokenizer, name, max_prompt_tokens=max_prompt_tokens,
                        prequantized=loaded(plan, model) if plan is not None else None)
    except RouteError as exc:
        raise ModelLoadError(f"{name}: {exc}") from None


def meta_model(config, trust_remote_code: bool = False):
    """An empty copy of the causal LM ``config`` describes, on the meta device (no memory:
    parameters have shapes and dtypes, no data), or None when transformers cannot build
    one. Discovery (:func:`~explorer.core.layers.discover_layers`) works on it as on a
    loaded model."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - the caller decides what an unbuildable model means
        return None


def _too_big(config, dtype, meta=None) -> bool:
    try:
        meta = meta if meta is not None else meta_model(config)
        size = sum(p.numel() for p in meta.parameters()) * torch.finfo(dtype).bits // 8
        free, _ = torch.cuda.mem_get_info()
        return size > ONE_GPU_SHARE * free
    except Exception:  # noqa: BLE001 - when unsure, let from_pretrained decide
        return False
