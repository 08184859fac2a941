"""Forward passes with routes: logits, target log-probs, prefix caches and generation.

All functions take an :class:`~explorer.core.model.MoEModel`, hold its lock and run under
``torch.inference_mode``. Routes are per batch row (one :class:`Route` each) or one
route for every row.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from explorer.core.defaults import GENERATION_TIE_BAND, MAX_NEW_TOKENS
from explorer.core.route import Route

if TYPE_CHECKING:
    from explorer.core.control import RouteControl
    from explorer.core.model import MoEModel


def as_ids(moe: MoEModel, ids) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    return t.to(moe.device)


def prefill(moe: MoEModel, ids, route: Route | None = None):
    """Run ``ids`` (1, T) once and return ``(logits, cache)``; the cache can be reused."""
    ids = as_ids(moe, ids)
    with moe.lock, torch.inference_mode(), moe.control(route):
        out = moe.model(input_ids=ids, use_cache=True)
    return out.logits, cache_of(out)


def cache_of(out):
    for name in ("cache", "past_key_values"):
        c = getattr(out, name, None)
        if c is not None:
            return c
    return None


def reusable(cache) -> bool:
    """Can this cache be copied and shared as a prefix? (plain DynamicCache only)."""
    from transformers import DynamicCache
    return type(cache) is DynamicCache


def expand_cache(cache, batch: int):
    """A ``batch``-row view of a 1-row cache; the original is never modified.

    Plain full-attention layers get broadcast views (no copy: the forward's ``cat``
    makes new tensors); any other layer type is deep-copied and repeated.
    """
    from transformers.cache_utils import DynamicLayer
    layers = getattr(cache, "layers", None)
    if layers and all(type(lay) is DynamicLayer for lay in layers):
        c = copy.copy(cache)
        c.layers = []
        for lay in layers:
            n = copy.copy(lay)
            if getattr(lay, "is_initialized", False) and batch > 1:
                n.keys = lay.keys.expand(batch, *lay.keys.shape[1:])
                n.values = lay.values.expand(batch, *lay.values.shape[1:])
            c.layers.append(n)
        return c
    c = copy.deepcopy(cache)
    if batch > 1:
        c.batch_repeat_interleave(batch)
    return c


def stack_caches(caches, rows: Sequence[int]):
    """One cache of ``sum(rows)`` rows whose i-th block repeats the 1-row ``caches[i]``
    ``rows[i]`` times (prompts of the same prefix length batched together); the originals
    are never modified. None unless every cache is a DynamicCache of the same layer types,
    full-attention or sliding-window layers, with equal lengths (the kinds whose state is
    their keys and values alone)."""
    first = caches[0]
    n = len(first.layers)
    for c in caches:
        if not _paddable(c) or len(c.layers) != n:
            return None
        for a, b in zip(c.layers, first.layers):
            if (type(a) is not type(b)
                    or getattr(a, "cumulative_length", None) != getattr(b, "cumulative_length", None)
                    or getattr(a, "is_initialized", False) != getattr(b, "is_initialized", False)):
                return None
    out = copy.copy(first)
    out.layers = []
    for i, lay in enumerate(first.layers):
        new = copy.copy(lay)  # attention's update replaces keys and values: never in place
        if getattr(lay, "is_initialized", False):
            parts = [c.layers[i] for c in caches]
            if any(p.keys.shape[1:] != lay.keys.shape[1:] for p in parts):
                return None
            new.keys = torch.cat([p.keys.expand(r, *p.keys.shape[1:]) for p, r in zip(parts, rows)])
            new.values = torch.cat([p.values.expand(r, *p.values.shape[1:])
                                    for p, r in zip(parts, rows)])
        out.layers.append(new)
    return out


def split_cache(cache, rows: int) -> list:
    """The ``rows`` one-row caches of a ``rows``-row cache (the inverse of
    :func:`stack_caches`; views of its tensors), or Nones where it is not a DynamicCache of
    full-attention or sliding-window layers."""
    if not _paddable(cache):
        return [None] * rows
    out = []
    for r in range(rows):
        c = copy.copy(cache)
        c.layers = []
        for lay in cache.layers:
            n = copy.copy(lay)
            if getattr(lay, "is_initialized", False):
                n.keys, n.values = lay.keys[r:r + 1], lay.values[r:r + 1]
            c.layers.append(n)
        out.append(c)
    return out


def logits_for_routes(moe: MoEModel, ids, routes: Sequence[Route] | Route | None, prefix_cache=None,
                      prefix_len: int = 0) -> torch.Tensor:
    """Logits of ``ids`` (1, T) for B routes at once: shape (B, T - prefix_len, vocab).

    With ``prefix_cache`` (the cache of ``ids[:, :prefix_len]``, from :func:`prefill`)
    only the suffix is recomputed; routes must not change positions below ``prefix_len``.
    """
    ids = as_ids(moe, ids)
    rlist = [routes] if routes is None or isinstance(routes, Route) else list(routes)
    B = len(rlist)
    batch = ids[:, prefix_len:].expand(B, -1)
    kwargs = {}
    if prefix_cache is not None and prefix_len > 0 and not reusable(prefix_cache):
        # hybrid caches (minimax's linear attention) cannot be shared: recompute, then slice
        return logits_for_routes(moe, ids, routes)[:, prefix_len:]
    if prefix_cache is not None and prefix_len > 0:
        kwargs["cache"] = expand_cache(prefix_cache, B)
        kwargs["use_cache"] = True
        # explicit positions: some hybrid caches (minimax) report a length of 0 from layer 0
        kwargs["position_ids"] = torch.arange(prefix_len, ids.shape[1],
                                              device=ids.device).unsqueeze(0).expand(B, -1)
        kwargs["attention_mask"] = torch.ones(B, ids.shape[1], dtype=torch.long, device=ids.device)
    else:
        kwargs["use_cache"] = False
    with moe.lock, torch.inference_mode(), moe.control(rlist if routes is not None else None):
        out = moe.model(input_ids=batch, **kwargs)
    return out.logits


def target_logprob(moe: MoEModel, prompt_ids, target_ids, routes, prefix_cache=None,
                   prefix_len: int = 0) -> torch.Tensor:
    """Joint log-prob of ``target_ids`` after ``prompt_ids`` (teacher-forced), per route.

    Returns a float64 tensor of shape (B,): sum over target tokens of log P(token) (see
    :func:`joint_logprob`).
    """
    prompt_ids = list(prompt_ids)
    target_ids = list(target_ids)
    ids = prompt_ids + target_ids
    logits = logits_for_routes(moe, ids, routes, prefix_cache, prefix_len)
    P, n = len(prompt_ids), len(target_ids)
    # logits row j predicts token prefix_len + j + 1
    start = P - 1 - prefix_len
    return joint_logprob(logits[:, start:start + n], target_ids)


def token_logprobs(logits: torch.Tensor, target_ids) -> torch.Tensor:
    """log P(token) per row of ``logits`` (R, V) for the tokens ``target_ids`` (R,),
    as float32: each row's log-softmax is taken on that row alone."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    tgt = torch.as_tensor(list(target_ids), device=lp.device)
    return lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


def joint_logprob(logits: torch.Tensor, target_ids) -> torch.Tensor:
    """Joint log-prob (B,) of ``target_ids`` (n) from the logits (B, n, V) predicting them.

    The one home of how every engine turns logits into a score: per-token log-probs in
    float32, then summed in float64 in token order. The sum then adds no rounding of its
    own (a float32 sum of 30 tokens at log-prob -150 rounds by up to ~1e-5, and differently
    for each summation order), so two engines' scores differ only by what their logits
    differ by, per token. Returned as float64 on the CPU.
    """
    B, n = logits.shape[0], logits.shape[1]
    picked = token_logprobs(logits.reshape(B * n, -1), list(target_ids) * B)
    return picked.view(B, n).double().sum(-1).cpu()


def next_token_logprobs(moe: MoEModel, ids, routes, token_ids: Sequence[int]) -> torch.Tensor:
    """log P(token | ids) at the next position for each route: shape (B, len(token_ids))."""
    logits = logits_for_routes(moe, ids, routes)
    lp = torch.log_softmax(logits[:, -1].float(), dim=-1)
    return lp[:, list(token_ids)].cpu()


@dataclass
class Generation:
    """Greedy continuation of one prompt: token ids (prompt + new) and the new text."""

    ids: list[int]
    prompt_len: int
    text: str


def generate(moe: MoEModel, ids, route: Route | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
             record: bool = False, on_token: Callable[[str], None] | None = None):
    """Greedy generation of up to ``max_new_tokens`` tokens after ``ids`` (a prompt's
    token ids, e.g. ``moe.encode(prompt)``) with ``route`` active on prompt and generated
    tokens; returns a :class:`Generation`. ``on_token`` receives each decoded text piece
    as it is produced (streaming).

    To get the routing records too, call :func:`generate_recorded`. ``record=True`` is
    deprecated (it warns): it returns what :func:`generate_recorded` returns, the
    ``(Generation, RouteControl)`` pair, as it did before that function existed.
    """
    if record:
        warnings.warn("generate(..., record=True) is deprecated: call generate_recorded(...), "
                      "which returns the same (Generation, RouteControl) pair",
                      DeprecationWarning, stacklevel=2)
        return _generate(moe, ids, route, max_new_tokens, True, on_token)
    return _generate(moe, ids, route, max_new_tokens, False, on_token)[0]


def generate_recorded(moe: MoEModel, ids, route: Route | None = None,
                      max_new_tokens: int = MAX_NEW_TOKENS,
                      on_token: Callable[[str], None] | None = None
                      ) -> tuple[Generation, RouteControl]:
    """:func:`generate`, recording the routing: returns the :class:`Generation` and the
    :class:`~explorer.core.control.RouteControl` whose records (``ctl.collected(layer)``,
    ``layer`` an absolute decoder-layer index) cover every prompt and generated token."""
    return _generate(moe, ids, route, max_new_tokens, True, on_token)


def _generate(moe: MoEModel, ids, route: Route | None, max_new_tokens: int, record: bool,
              on_token: Callable[[str], None] | None) -> tuple[Generation, RouteControl]:
    """The generation both public functions run: ``(Generation, RouteControl)``, the
    control holding records only when ``record``."""
    ids = as_ids(moe, ids)
    streamer = _CallbackStreamer(moe, on_token) if on_token is not None else None
    pad = moe.tokenizer.pad_token_id if moe.tokenizer is not None else None
    eos = moe.eos_ids
    with moe.lock, torch.inference_mode(), moe.control(route, record=record) as ctl:
        if max_new_tokens > 0:
            out = moe.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                eos_token_id=eos or None, streamer=streamer,
                return_dict_in_generate=True, use_cache=True)
            seq = out.sequences
            if record and seq.shape[1] > ids.shape[1]:
                # generate never runs the last token through the model: do it, cached
                cache = cache_of(out)
                if cache is not None:
                    moe.model(input_ids=seq[:, -1:], cache=cache, use_cache=True)
                else:
                    ctl.clear()
                    moe.model(input_ids=seq, use_cache=False)
        else:
            seq = ids
            if record:
                moe.model(input_ids=ids, use_cache=False)
    all_ids = seq[0].tolist()
    new = all_ids[ids.shape[1]:]
    text = moe.decode(new) if moe.tokenizer is not None else ""
    gen = Generation(all_ids, ids.shape[1], text)
    return gen, ctl


def _plain_greedy(moe: MoEModel) -> bool:
    """Does ``moe``'s generation config leave greedy decoding plain (an argmax of the raw
    logits)? Penalties, forced, suppressed or biased tokens and minimum lengths do not."""
    gc = getattr(moe.model, "generation_config", None)
    if gc is None:
        return True
    unset = (None, 0, 1.0, [], ())
    for name in ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                 "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "forced_bos_token_id", "forced_eos_token_id", "min_length", "min_new_tokens",
                 "sequence_bias", "exponential_decay_length_penalty", "guidance_scale"):
        if getattr(gc, name, None) not in unset:
            return False
    return not getattr(gc, "renormalize_logits", False)


def _paddable(cache) -> bool:
    """Is ``cache`` a DynamicCache of full-attention or sliding-window layers only (the
    kinds whose state is their keys and values alone: they stack, split and pad)?"""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    return type(cache) is DynamicCache and all(
        type(lay) in (DynamicLayer, DynamicSlidingWindowLayer) for lay in cache.layers)


def _shifted(route: Route | None, by: int) -> Route | None:
    """``route`` with its positions moved ``by`` tokens on (left padding)."""
    if route is None or not by:
        return route
    d = route.to_dict()
    for e in d["edits"]:
        if e.get("position") is not None:
            e["position"] += by
    return Route.from_dict(d)


def generate_many(moe: MoEModel, items: Sequence[tuple], max_new_tokens: int = MAX_NEW_TOKENS
                  ) -> list[Generation]:
    """Greedy generations of several prompts in one batch: ``items`` are ``(ids, route)``
    pairs, and each result equals ``generate(moe, ids, route, max_new_tokens)``.

    Prompts are left-padded, with their own positions and their routes moved along; at
    every step each row's next token is the argmax of its logits. A row whose top two
    logits come within :data:`~explorer.core.defaults.GENERATION_TIE_BAND` of each other
    at some step (where batched rounding could pick the other token) is generated again
    alone, so the texts are those of lone generations by construction. Models whose
    generation config changes greedy decoding get lone generations throughout.
    """
    items = list(items)
    if (len(items) < 2 or max_new_tokens <= 0 or not _plain_greedy(moe)
            or moe.cache.paddable_cache is False):
        return [generate(moe, ids, r, max_new_tokens=max_new_tokens) for ids, r in items]
    dev = moe.device
    seqs = [as_ids(moe, ids)[0].tolist() for ids, _ in items]
    B, L = len(seqs), max(map(len, seqs))
    pads = [L - len(q) for q in seqs]
    eos = set(moe.eos_ids or [])
    pad_id = moe.tokenizer.pad_token_id if moe.tokenizer is not None else None
    pad_id = pad_id if pad_id is not None else (min(eos) if eos else 0)
    band = GENERATION_TIE_BAND.get(moe.info.dtype, GENERATION_TIE_BAND["float16"])
    ids = torch.tensor([[pad_id] * p + q for p, q in zip(pads, seqs)], device=dev)
    mask = torch.tensor([[0] * p + [1] * len(q) for p, q in zip(pads, seqs)], device=dev)
    pos = torch.tensor([[0] * p + list(range(len(q))) for p, q in zip(pads, seqs)], device=dev)
    routes = [_shifted(r, p) for (_, r), p in zip(items, pads)]
    new: list[list[int]] = [[] for _ in range(B)]
    done, unsure = [False] * B, [False] * B
    with moe.lock, torch.inference_mode(), moe.control(routes):
        out = moe.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                        **keep_kwargs(moe, 1))
        if moe.cache.paddable_cache is None:  # recurrent (linear-attention) states would
            moe.cache.paddable_cache = _paddable(cache_of(out))  # take the padding in
        for step in range(max_new_tokens if moe.cache.paddable_cache else 0):
            top = out.logits[:, -1].float().topk(2, dim=-1)
            best, gap = top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()
            for b in range(B):
                if done[b]:
                    continue
                unsure[b] = unsure[b] or gap[b] < band
                new[b].append(best[b])
                done[b] = best[b] in eos
            if all(done) or step == max_new_tokens - 1:
                break
            feed = torch.tensor([[n[-1]] for n in new], device=dev)  # finished rows: ignored
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            out = moe.model(input_ids=feed, attention_mask=mask, position_ids=pos,
                            cache=cache_of(out), use_cache=True, **keep_kwargs(moe, 1))
    if not moe.cache.paddable_cache:
        return [generate(moe, i, r, max_new_tokens=max_new_tokens) for i, r in items]
    gens = []
    for (ids_b, route), q, n, u in zip(items, seqs, new, unsure):
        if u:
            gens.append(generate(moe, ids_b, route, max_new_tokens=max_new_tokens))
        else:
            text = moe.decode(n) if moe.tokenizer is not None else ""
            gens.append(Generation(q + n, len(q), text))
    return gens


def keep_kwargs(moe: MoEModel, keep: int | None) -> dict:
    """``logits_to_keep`` when the model supports it (only the last rows get logits)."""
    if not keep:
        return {}
    ok = moe.cache.logits_to_keep
    if ok is None:
        import inspect
        ok = "logits_to_keep" in inspect.signature(moe.model.forward).parameters
        moe.cache.logits_to_keep = ok
    return {"logits_to_keep": keep} if ok else {}


class _CallbackStreamer:
    """A minimal transformers streamer that decodes new tokens incrementally."""

    def __init__(self, moe: MoEModel, callback):
        self.moe, self.callback = moe, callback
        self.first = True
        self.ids: list[int] = []
        self.text = ""

    def put(self, value):
        if self.first:  # the prompt
            self.first = False
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.moe.decode(self.ids)
        if len(text) > len(self.text):
            self.callback(text[len(self.text):])
            self.text = text

    def end(self):
        pass
