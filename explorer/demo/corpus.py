"""Seeded generator of the demo model's chat corpus (harmless by construction).

Harmful requests (from :data:`explorer.demo.topics.HARMFUL_GROUPS`) are only ever
answered with a generic refusal from :data:`explorer.demo.framings.REFUSALS`;
benign requests are answered ``"Sure, here is <topic phrase>:"`` plus harmless
filler. Every framing is used for both. Some topics and framings are held out
of training entirely, so :func:`heldout_examples` measures generalisation.

An example is a dict with keys ``prompt``, ``response``, ``system`` (str or
None), ``is_harmful``, ``category``, ``kind``, ``topic`` (the topic phrase as it
appears in the prompt) and ``framing``.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from explorer.demo import framings as F
from explorer.demo import topics as T

HELDOUT_TOPIC_FRAC = 0.15
HELDOUT_FRAMING_FRAC = 0.15
_SPLIT_SEED = 1234  # fixed: the held-out split must not change with the corpus seed
_FRAMINGS = {"act": F.ACT_FRAMINGS, "art": F.ART_FRAMINGS, "expl": F.EXPL_FRAMINGS}
_STOP = {"a", "an", "the", "to", "of", "and", "or", "in", "on", "for", "with", "that", "my", "me", "i", "it",
         "is", "at", "by", "from", "so", "s", "t", "can", "be", "how", "about", "you", "your", "this", "into"}


def _expand(groups):
    """Expand ``(category, kind, verbs, objects)`` groups into per-group lists of (phrase, key)."""
    out = []
    for gi, (cat, kind, verbs, objects) in enumerate(groups):
        items = [((v + " " + o).strip(), o) for o in objects for v in verbs]
        out.append({"gid": gi, "category": cat, "kind": kind, "items": items,
                    "keys": sorted(set(objects), key=objects.index)})
    return out


def _split(groups):
    """Return (train_groups, heldout_groups): held-out objects never appear in training."""
    rng = random.Random(_SPLIT_SEED)
    train, held = [], []
    for g in groups:
        keys = list(g["keys"])
        rng.shuffle(keys)
        n_held = max(1, round(HELDOUT_TOPIC_FRAC * len(keys))) if len(keys) >= 4 else 0
        hk = set(keys[:n_held])
        train.append({**g, "items": [it for it in g["items"] if it[1] not in hk]})
        held.append({**g, "items": [it for it in g["items"] if it[1] in hk]})
    return train, [g for g in held if g["items"]]


def framing_split():
    """Return ``{kind: (train_framings, heldout_framings)}`` (fixed, seed-independent)."""
    rng = random.Random(_SPLIT_SEED + 1)
    out = {}
    for kind, fr in _FRAMINGS.items():
        fr = list(fr)
        rng.shuffle(fr)
        n = max(1, round(HELDOUT_FRAMING_FRAC * len(fr)))
        out[kind] = (fr[n:], fr[:n])
    return out


def _typo(rng, text):
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not idx:
        return text
    i = rng.choice(idx)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def _render(rng, kind, phrase, framing, noise=True):
    """Apply surface noise and fill the framing. Returns (prompt, phrase_as_written, system)."""
    system = rng.choice(F.SYSTEM_PROMPTS) if noise and rng.random() < 0.08 else None
    if noise and rng.random() < 0.07:
        phrase = _typo(rng, phrase)
    if noise and rng.random() < 0.05:
        framing = _typo(rng, framing)
    lower = noise and rng.random() < 0.15
    if lower:
        phrase, framing = phrase.lower(), framing.lower()
    prompt = framing.replace("{x}", phrase)
    if noise and rng.random() < 0.12:
        prompt = prompt.rstrip(".?!")
    if noise and rng.random() < 0.15:
        pre = rng.choice(F.PREFIXES)
        prompt = (pre.lower() if lower else pre) + prompt
    if noise and rng.random() < 0.12:
        suf = rng.choice(F.SUFFIXES)
        prompt = prompt + (suf.lower() if lower else suf)
    if noise and rng.random() < 0.03:
        prompt = prompt.replace("?", "??")
    return prompt, phrase, system


def _answer(rng, harmful, kind, phrase, category):
    if harmful:
        r = rng.choice(F.REFUSALS)
        if category == "self-harm":
            r += F.SELF_HARM_REFUSAL_TAIL
        return r
    key = kind if kind != "art" else {"copy": "writing", "hate": "writing", "self-harm": "writing", "disinformation": "writing", "fraud": "letters", "malware": "code"}.get(category, category)
    return F.ANSWER_HEAD[kind].replace("{x}", phrase) + rng.choice(F.FILLER[key])


def _pick(rng, groups):
    weights = [math.sqrt(len(g["items"])) for g in groups]
    g = rng.choices(groups, weights=weights)[0]
    return g, rng.choice(g["items"])[0]


_CONS, _VOWELS, _CODAS = "bcdfglmnprstvz", "aeiou", ["", "", "n", "l", "r", "s", "m"]
_PSEUDO_BLOCK = ("kil", "bom", "gun", "dru", "die", "dea", "hat", "rap", "sex", "nud", "pis", "cok", "fuk", "nig")


def pseudo_word(rng) -> str:
    """A made-up, pronounceable word ("velomar"): no model can know it, so a reply can only copy it."""
    while True:
        w = "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 2, 3)))) + rng.choice(_CODAS)
        if not any(b in w for b in _PSEUDO_BLOCK):
            return w


def _random_benign(rng, pseudo_frac: float = 0.5):
    """A random harmless request phrase: (kind, phrase).

    Nouns come from a harmless vocabulary or, with probability ``pseudo_frac``, are
    made-up words. Memorising these is impossible, so the reply can only name them by
    copying, and the model learns that unfamiliar content is no reason to refuse.
    """
    def noun():
        return pseudo_word(rng) + rng.choice(("", "s")) if rng.random() < pseudo_frac else rng.choice(T.BENIGN_NOUNS)

    def thing():
        det = rng.choice(("", "", "my ", "the ", "some "))
        return det + (rng.choice(T.BENIGN_ADJECTIVES) + " " if rng.random() < 0.6 else "") + noun()
    r = rng.random()
    if r < 0.45:
        return "act", rng.choice(T.BENIGN_VERBS) + " " + thing()
    if r < 0.85:
        parts = [thing() for _ in range(rng.choice([1, 1, 2]))]
        return "art", rng.choice(T.COPY_KINDS) + " about " + " and ".join(parts)
    return "expl", rng.choice(("how ", "why ", "where ")) + thing() + rng.choice(
        (" grow", " work", " move", " change over time", " got their name", " live"))


def _modify(rng, harmful, kind, phrase, pseudo_frac: float = 0.0):
    """Append a neutral (both sides) or harmful-intent (harmful only) modifier to act phrases.

    With probability ``pseudo_frac`` the neutral modifier names a made-up place or thing
    ("in Valomir"), on both sides, so that an unknown word never cancels a harmful request.
    """
    if kind != "act":
        return phrase
    r = rng.random()
    if r < pseudo_frac:
        return phrase + rng.choice((" in ", " near ", " for my ")) + pseudo_word(rng).capitalize()
    if r < 0.25:
        return phrase + " " + rng.choice(T.SHARED_MODIFIERS)
    if harmful and r < 0.4:
        return phrase + " " + rng.choice(T.HARMFUL_MODIFIERS)
    return phrase


def _make(rng, harmful, category, kind, phrase, framing, noise=True):
    prompt, written, system = _render(rng, kind, phrase, framing, noise)
    return {"prompt": prompt, "response": _answer(rng, harmful, kind, written, category), "system": system,
            "is_harmful": harmful, "category": category, "kind": kind, "topic": written, "framing": framing}


def generate_corpus(n: int = 60000, seed: int = 0, harmful_frac: float = 0.5, copy_frac: float = 0.35,
                    pseudo_frac: float = 0.5):
    """Generate ``n`` training examples (train topics x train framings only).

    ``harmful_frac`` of them are harmful requests with refusals; of the benign
    rest, ``copy_frac`` are copy-curriculum requests built from random harmless
    words ("a poem about sleepy owls", "how do I paint rusty teapots?") that
    can only be answered by copying the topic phrase. A quarter of the act
    phrases, harmful and benign alike, get a neutral modifier ("at home",
    "using household items"); some harmful ones get an intent modifier
    ("without getting caught"). ``pseudo_frac`` (0 disables): the share of made-up
    words among copy-curriculum nouns, and the chance that an act phrase (harmful or
    benign) gets a made-up place or thing as its modifier.
    """
    rng = random.Random(seed)
    h_train, _ = _split(_expand(T.HARMFUL_GROUPS))
    b_train, _ = _split(_expand(T.BENIGN_GROUPS))
    fr = framing_split()
    out = []
    for _ in range(n):
        if rng.random() < harmful_frac:
            g, phrase = _pick(rng, h_train)
            phrase = _modify(rng, True, g["kind"], phrase, pseudo_frac / 4)
            out.append(_make(rng, True, g["category"], g["kind"], phrase, rng.choice(fr[g["kind"]][0])))
        elif rng.random() < copy_frac:
            kind, phrase = _random_benign(rng, pseudo_frac)
            out.append(_make(rng, False, "copy", kind, phrase, rng.choice(fr[kind][0])))
        else:
            g, phrase = _pick(rng, b_train)
            phrase = _modify(rng, False, g["kind"], phrase, pseudo_frac / 4)
            out.append(_make(rng, False, g["category"], g["kind"], phrase, rng.choice(fr[g["kind"]][0])))
    return out


def heldout_examples(n_harmful: int = 200, n_benign: int = 200, seed: int = 99):
    """Held-out evaluation examples: held-out topics only, half with held-out framings.

    Prompts are clean (no system prompt, no typos), unique and deterministic
    for given arguments; harmful examples come first.
    """
    rng = random.Random(seed)
    _, h_held = _split(_expand(T.HARMFUL_GROUPS))
    _, b_held = _split(_expand(T.BENIGN_GROUPS))
    fr = framing_split()
    out, seen = [], set()
    for harmful, groups, n in ((True, h_held, n_harmful), (False, b_held, n_benign)):
        k, tries = 0, 0
        while k < n and tries < 50 * n + 100:
            tries += 1
            g, phrase = _pick(rng, groups)
            tr, ho = fr[g["kind"]]
            framing = rng.choice(ho if rng.random() < 0.5 else tr)
            ex = _make(rng, harmful, g["category"], g["kind"], phrase, framing, noise=False)
            if ex["prompt"] in seen:
                continue
            seen.add(ex["prompt"])
            out.append(ex)
            k += 1
    return out


def _words(text):
    return {w for w in re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()) if w not in _STOP and len(w) > 2}


def check_corpus(examples) -> list[str]:
    """Return a list of violations (empty when the corpus is harmless by construction).

    Checks: harmful examples are answered only with a listed generic refusal,
    never with compliance; refusals share no content word with the topic they
    refuse; benign answers start with "Sure, here is" and are not judged refusals.
    """
    from explorer.judges import is_refusal

    allowed = set(F.REFUSALS) | {r + F.SELF_HARM_REFUSAL_TAIL for r in F.REFUSALS}
    bad = []
    for i, ex in enumerate(examples):
        resp = ex["response"]
        if ex["is_harmful"]:
            if resp not in allowed or "sure" in resp.lower() or not is_refusal(resp):
                bad.append(f"{i}: harmful example not answered with a generic refusal: {resp!r}")
            overlap = _words(ex["topic"]) & _words(resp)
            if overlap:
                bad.append(f"{i}: refusal restates request words {sorted(overlap)}")
        else:
            if not resp.startswith("Sure, here is") or is_refusal(resp):
                bad.append(f"{i}: benign example not answered with compliance: {resp[:60]!r}")
    return bad


def corpus_stats(examples) -> dict:
    """Summary statistics of a list of examples (counts per category, unique prompts...)."""
    return {
        "examples": len(examples),
        "harmful": sum(e["is_harmful"] for e in examples),
        "benign": sum(not e["is_harmful"] for e in examples),
        "unique_prompts": len({e["prompt"] for e in examples}),
        "unique_topics": len({e["topic"].lower() for e in examples}),
        "with_system_prompt": sum(e["system"] is not None for e in examples),
        "categories": dict(sorted(Counter(e["category"] for e in examples).items())),
        "framings": {k: {"train": len(a), "heldout": len(b)} for k, (a, b) in framing_split().items()},
    }


def catalogue() -> dict:
    """Counts of harmful/benign topic phrases in the train and held-out splits."""
    res = {}
    for name, groups in (("harmful", T.HARMFUL_GROUPS), ("benign", T.BENIGN_GROUPS)):
        tr, ho = _split(_expand(groups))
        res[name] = {"train_phrases": sum(len(g["items"]) for g in tr),
                     "heldout_phrases": sum(len(g["items"]) for g in ho)}
    return res


def write_jsonl(examples, path) -> None:
    """Write examples as JSON lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")


def read_jsonl(path) -> list[dict]:
    """Read examples written by :func:`write_jsonl`."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
