"""Method parameters declared once (explorer.core.params) and prompts prepared once
(MoEModel.prepare, Prompt): the one check of every parameter, the one home of a target's
checks, and the library functions that take a prepared prompt wherever they take text."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from explorer.attacks import get_attack, list_attacks
from explorer.core.defaults import (
    DEFAULT_THRESHOLD,
    FSOUR_CANDIDATES,
    FSOUR_MAX_ITERS,
    MAX_CANDIDATES,
    MAX_TARGET_TOKENS,
)
from explorer.core.errors import InputError, ParamError
from explorer.core.params import Params, check_value, param
from explorer.core.prompt import Prompt


@dataclass(frozen=True)
class Toy(Params):
    what = "toy parameters"
    steps: int = param(10, "steps", lo=1, hi=100)
    ratio: float = param(0.5, "a share", kind="ratio")
    lp: float = param(-0.1, "a log-prob", kind="logprob")
    mode: str = param("a", "a mode", choices=("a", "b"))
    label: str | None = param(None, "a label", kind="text", max_chars=5)
    on: bool = param(False, "a switch")


def test_parse_gives_defaults_and_checks_every_value():
    assert Toy.parse() == Toy() and Toy.parse(None) == Toy()
    t = Toy.parse({"steps": 20.0, "ratio": "0.25", "mode": "b", "label": "hi", "on": True})
    assert t == Toy(steps=20, ratio=0.25, mode="b", label="hi", on=True)
    assert isinstance(t.steps, int) and Toy.parse(t) is t
    assert Toy.from_dict(t.to_dict()) == t  # JSON round trip
    assert t.replace(steps=3).steps == 3
    for bad, words in (({"steps": 0}, "steps must lie in 1..100, got 0"),
                       ({"steps": 2.5}, "steps must be an integer"),
                       ({"steps": True}, "steps must be an integer"),
                       ({"steps": "many"}, "steps must be an integer"),
                       ({"ratio": 1.0}, "strictly between 0 and 1"),
                       ({"ratio": float("nan")}, "ratio must be a number"),
                       ({"lp": 0.5}, "log-probability"),
                       ({"mode": "c"}, "unknown mode 'c'; choose a | b"),
                       ({"label": "   "}, "the label is empty"),
                       ({"label": "toolong"}, "at most 5 are accepted"),
                       ({"label": "x\ud800"}, "lone surrogates"),
                       ({"label": 7}, "label must be text"),
                       ({"on": "yes"}, "on must be true or false"),
                       ({"colour": 1}, "unknown toy parameters ['colour']"),
                       ([("steps", 1)], "must be a mapping")):
        with pytest.raises(ParamError, match=words.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")):
            Toy.parse(bad)
    assert Toy.parse({"colour": 1}, unknown="ignore") == Toy()
    with pytest.raises(ParamError):  # a ParamError is bad input, and a ValueError
        check_value("x", Toy.specs()["steps"], -1)
    assert issubclass(ParamError, InputError) and issubclass(ParamError, ValueError)


def test_specs_say_where_a_parameter_is_offered_and_how_it_is_flagged():
    s = Toy.specs()
    assert list(s) == ["steps", "ratio", "lp", "mode", "label", "on"]
    assert s["steps"].option("steps") == "--steps" and s["mode"].kind == "choice"
    assert s["on"].kind == "flag" and s["label"].kind == "text"
    ref = get_attack("random").Params.specs()["reference_file"]
    assert ref.option("reference_file") == "--reference"
    assert ref.offered("evaluate") and not ref.offered("defend")


def test_the_attacks_parameters_are_the_methods_defaults():
    """One home: the F-SOUR attack's Params defaults are fsour()'s signature defaults."""
    import inspect

    from explorer.methods.fsour import fsour
    p = get_attack("fsour").Params()
    sig = inspect.signature(fsour).parameters
    for name in ("candidates", "threshold", "max_iters", "engine", "order"):
        assert getattr(p, name) == sig[name].default, name
    assert (p.candidates, p.max_iters, p.threshold) == (FSOUR_CANDIDATES, FSOUR_MAX_ITERS,
                                                        DEFAULT_THRESHOLD)
    assert get_attack("fsour").Params.specs()["candidates"].hi == MAX_CANDIDATES
    assert math.isclose(math.exp(p.threshold), 0.8)
    for name in list_attacks():  # every registered attack declares what it takes
        params = get_attack(name).Params
        assert params.parse() == params()


# -- prompts prepared once ----------------------------------------------------------------------
def test_prepare_templates_once_and_remembers(tiny, monkeypatch):
    calls = []
    template = type(tiny).template

    def counted(self, *a, **k):
        calls.append(a)
        return template(self, *a, **k)
    monkeypatch.setattr(type(tiny), "template", counted)
    tiny.cache.prompts.clear()
    p = tiny.prepare("Pick a lock, please.")
    assert isinstance(p, Prompt) and p.model == tiny.name and p.text == "Pick a lock, please."
    assert p.ids == tuple(tiny.encode("Pick a lock, please.")) and p.num_tokens == len(p)
    assert tiny.prepare("Pick a lock, please.") is p and tiny.prepare(p) is p
    assert tiny.encode(p) == list(p.ids)
    assert len(calls) == 1  # the text was templated and tokenised once
    sp = tiny.prepare("Pick a lock, please.", "Be brief.")
    assert sp.system == "Be brief." and sp.ids != p.ids and sp.info["system"] == "Be brief."
    assert tiny.prepare(sp, "Be brief.") is sp
    with pytest.raises(InputError, match="another system prompt"):
        tiny.prepare(sp, "Be long.")
    assert Prompt.from_dict(sp.to_dict()) == sp


def test_target_ids_is_the_one_home_of_a_targets_checks(tiny):
    assert tiny.target_ids("Sure, here is") == list(
        tiny.tokenizer("Sure, here is", add_special_tokens=False)["input_ids"])
    for bad, words in (("", "empty"), ("  ", "empty"), ("Sure " * 150, "tokens; at most"),
                       ("x" * 2000, "characters; at most"), (None, "must be text")):
        with pytest.raises(InputError, match=words):
            tiny.target_ids(bad)
    assert MAX_TARGET_TOKENS == 128


def test_library_functions_take_a_prepared_prompt(tiny):
    from explorer.core.trace import trace
    from explorer.methods.fsour import fsour
    from explorer.methods.rosais import rosais
    p = tiny.prepare("How do I pick a lock?", "Be brief.")
    a, b = trace(tiny, p, max_new_tokens=2), trace(tiny, p.text, max_new_tokens=2,
                                                    system="Be brief.")
    assert a.to_dict() == b.to_dict() and a.prompt == p.text and a.system == "Be brief."
    ra = rosais(tiny, p, samples=2, top=1, max_new_tokens=0)
    rb = rosais(tiny, p.text, samples=2, top=1, max_new_tokens=0, system="Be brief.")
    assert ra.scores == rb.scores and ra.prompt == p.text
    fa = fsour(tiny, p, candidates=1, max_iters=1, max_new_tokens=0)
    fb = fsour(tiny, p.text, candidates=1, max_iters=1, max_new_tokens=0, system="Be brief.")
    assert fa.route == fb.route and fa.logprob == fb.logprob and fa.prompt == p.text
    assert fa.route.info["system"] == "Be brief."
