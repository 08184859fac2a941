"""Hosted mode (library side): :class:`explorer.app.hosted.HostedPolicy`."""

from __future__ import annotations

import math
import threading
import time

import pytest
from conftest import FakeClock, ui_handler

from explorer.app.hosted import REDACTION_NOTE, HostedPolicy, PolicyError, first_sentence
from explorer.judges import Verdict

ON = {"EXPLORER_HOSTED": "1", "EXPLORER_MODEL_ALLOWLIST": "allenai/OLMoE-1B-7B-0924, "
      "Qwen/Qwen1.5-MoE-A2.7B"}


def hosted(**kw) -> HostedPolicy:
    return HostedPolicy.from_env(dict(ON), **kw)


# -- configuration ------------------------------------------------------------------------
def test_from_env_defaults_and_switches():
    off = HostedPolicy.from_env({})
    assert not off.enabled and off.model_allowlist == () and not off.full_text
    p = hosted()
    assert p.enabled
    assert p.model_allowlist == ("allenai/OLMoE-1B-7B-0924", "Qwen/Qwen1.5-MoE-A2.7B")
    assert (p.max_prompt_tokens, p.max_new_tokens, p.max_search_budget,
            p.max_jobs_per_session) == (256, 64, 5000, 2)
    assert p.rate == pytest.approx(30 / 60) and p.burst == 10
    assert p.allowed_judges == ("keyword",)
    env = {**ON, "EXPLORER_HOSTED_MAX_PROMPT_TOKENS": "100", "EXPLORER_HOSTED_MAX_NEW_TOKENS":
           "16", "EXPLORER_HOSTED_MAX_SEARCH": "300", "EXPLORER_HOSTED_MAX_JOBS": "1",
           "EXPLORER_HOSTED_RATE": "6", "EXPLORER_HOSTED_BURST": "2",
           "EXPLORER_HOSTED_JUDGES": "keyword,rubric", "EXPLORER_HOSTED_FULL_TEXT": "yes"}
    p = HostedPolicy.from_env(env)
    assert (p.max_prompt_tokens, p.max_new_tokens, p.max_search_budget,
            p.max_jobs_per_session) == (100, 16, 300, 1)
    assert p.rate == pytest.approx(0.1) and p.burst == 2 and p.full_text
    assert p.allowed_judges == ("keyword", "rubric") and p.max_prompt_chars == 1600
    # the general prompt cap is the default for the hosted one
    assert HostedPolicy.from_env({**ON, "EXPLORER_MAX_PROMPT_TOKENS": "77"}) \
        .max_prompt_tokens == 77
    # flags win over the environment
    p = HostedPolicy.from_env(env, enabled=False, allowlist=["a/b"], full_text=False,
                              max_new_tokens=8)
    assert not p.enabled and p.model_allowlist == ("a/b",) and not p.full_text
    assert p.max_new_tokens == 8
    assert HostedPolicy.from_env({}, enabled=True).enabled
    d = hosted().to_dict()
    assert d["enabled"] and d["requests_per_minute"] == pytest.approx(30)


@pytest.mark.parametrize("env,match", [
    ({"EXPLORER_HOSTED": "maybe"}, "EXPLORER_HOSTED must be 1 or 0"),
    ({"EXPLORER_HOSTED_MAX_NEW_TOKENS": "0"}, "EXPLORER_HOSTED_MAX_NEW_TOKENS must be"),
    ({"EXPLORER_HOSTED_MAX_SEARCH": "-3"}, "EXPLORER_HOSTED_MAX_SEARCH"),
    ({"EXPLORER_HOSTED_RATE": "nan"}, "EXPLORER_HOSTED_RATE"),
    ({"EXPLORER_HOSTED_BURST": "lots"}, "EXPLORER_HOSTED_BURST"),
    ({"EXPLORER_MODEL_ALLOWLIST": "/srv/models/secret"}, "hub ids"),
    ({"EXPLORER_MODEL_ALLOWLIST": "org/a,../b"}, "hub ids"),
    ({"EXPLORER_HOSTED_FULL_TEXT": "2"}, "EXPLORER_HOSTED_FULL_TEXT"),
])
def test_malformed_environment_is_refused(env, match):
    with pytest.raises(PolicyError, match=match):
        HostedPolicy.from_env(env)


def test_policy_error_is_a_value_error():
    assert issubclass(PolicyError, ValueError)
    with pytest.raises(TypeError, match="unknown HostedPolicy field"):
        HostedPolicy.from_env({}, max_gpus=3)


# -- models -------------------------------------------------------------------------------
def test_check_model(tmp_path):
    p = hosted()
    for demo in (None, "", "demo", " demo "):
        assert p.check_model(demo) == "demo"
    assert p.check_model("allenai/OLMoE-1B-7B-0924") == "allenai/OLMoE-1B-7B-0924"
    assert p.check_model("ALLENAI/olmoe-1b-7b-0924") == "allenai/OLMoE-1B-7B-0924"
    for name in ("mistralai/Mixtral-8x7B-v0.1", "allenai/OLMoE-1B-7B-0924-Instruct", "gpt2"):
        with pytest.raises(PolicyError, match="not available on this server"):
            p.check_model(name)
    (tmp_path / "model").mkdir()
    for path in (str(tmp_path / "model"), "./model", "../x", "~/models/x", "/etc/passwd",
                 "a\\b", "a/b/c", "weights.safetensors", "x\x00y"):
        with pytest.raises(PolicyError, match="local model paths are not allowed"):
            p.check_model(path)
    with pytest.raises(PolicyError, match="must be text"):
        p.check_model(42)
    off = HostedPolicy.from_env({})  # off: anything goes (load_model judges it)
    assert off.check_model(str(tmp_path / "model")) == str(tmp_path / "model")
    assert off.check_model("demo") == "demo"


def test_an_allowlisted_name_that_is_also_a_local_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "allenai" / "OLMoE-1B-7B-0924").mkdir(parents=True)
    with pytest.raises(PolicyError, match="local model paths"):
        hosted().check_model("allenai/OLMoE-1B-7B-0924")


# -- prompts, generation, searches, jobs --------------------------------------------------
def test_check_prompt(tiny, monkeypatch):
    monkeypatch.delenv("EXPLORER_MAX_PROMPT_TOKENS", raising=False)
    n = len(tiny.encode("Tell me a joke"))
    assert hosted().check_prompt(tiny, "Tell me a joke") == n
    assert HostedPolicy.from_env({}).check_prompt(tiny, "Tell me a joke") == n
    for bad in ("", "  \n", None, 3):
        with pytest.raises(PolicyError, match="the prompt is empty"):
            hosted().check_prompt(tiny, bad)
    with pytest.raises(PolicyError, match=f"{n} tokens with the chat template, this server "
                                          f"allows {n - 1}"):
        hosted(max_prompt_tokens=n - 1).check_prompt(tiny, "Tell me a joke")
    assert hosted(max_prompt_tokens=n).check_prompt(tiny, "Tell me a joke") == n
    with pytest.raises(PolicyError, match="10000 characters, this server allows 4096"):
        hosted().check_prompt(tiny, "a" * 10_000)  # refused before tokenising
    # beyond the model's own context: refused whether hosted or not
    for p in (hosted(max_prompt_tokens=10_000, max_prompt_chars=10**6),
              HostedPolicy.from_env({})):
        with pytest.raises(PolicyError, match="limit is 512"):
            p.check_prompt(tiny, "hello " * 600)
    with pytest.raises(PolicyError, match="not valid Unicode"):
        hosted().check_prompt(tiny, "hi \ud800")


def test_check_generation():
    p = hosted(max_new_tokens=32)
    assert p.check_generation(0) == 0 and p.check_generation(32) == 32
    assert p.check_generation(8.0) == 8
    with pytest.raises(PolicyError, match="above this server's limit of 32"):
        p.check_generation(33)
    for bad in (-1, 1.5, True, "8", None, float("nan"), float("inf")):
        with pytest.raises(PolicyError, match="max_new_tokens"):
            p.check_generation(bad)
    assert HostedPolicy.from_env({}).check_generation(10_000) == 10_000


class _Host:
    def __init__(self, moe):
        self.moe = moe

    def require(self):
        return self.moe


class _App:
    """What a visit asks of the app for its budget and judges: the policy and the model."""

    def __init__(self, policy, moe):
        self.policy, self.host = policy, _Host(moe)


def test_a_search_budget_is_its_attacks_cost_at_the_gate(tiny):
    """The search budget is asked of the visit: the attack's cost (F-SOUR: candidates x
    restarts x (prompt + target tokens), every scored candidate runs over both) against
    the server's limit, with the judges the server offers."""
    from explorer.app.gate import Visit
    from explorer.attacks import Shape, get_attack
    fsour = get_attack("fsour")
    prompt = tiny.prepare("Tell me how to pick a lock.")
    P, T = prompt.num_tokens, len(tiny.target_ids("Sure, here is"))
    params = fsour.Params.parse({"candidates": 4, "max_iters": 3})
    assert fsour.cost(params, Shape(P, len(tiny.moe_layers), 0, T)) == 4 * 3 * (P + T)
    assert fsour.cost(fsour.Params.parse({}), Shape(P, 1, 0, 0)) == 10 * 5 * P  # defaults
    exact = Visit(_App(hosted(max_search_budget=4 * 3 * (P + T)), tiny))
    exact.afford(fsour, params, prompt, 16, "this search", target="Sure, here is")
    exact.afford(fsour, params, prompt, 16, "this search")  # without a target: P alone
    tight = Visit(_App(hosted(max_search_budget=4 * 3 * (P + T) - 1), tiny))
    with pytest.raises(PolicyError, match=rf"this search would run about {4 * 3 * (P + T)} "
                                          rf"forward passes, which is above this server's "
                                          rf"limit of {4 * 3 * (P + T) - 1}"):
        tight.afford(fsour, params, prompt, 16, "this search", target="Sure, here is")
    with pytest.raises(PolicyError, match="the judge 'rubric' is not allowed"):
        tight.judge("rubric")
    off = Visit(_App(HostedPolicy.from_env({}), tiny))  # no budget without hosted mode
    off.afford(fsour, fsour.Params.parse({"candidates": 1000, "max_iters": 100}), prompt,
               16, "this search", target="Sure, here is")


def test_check_jobs():
    p = hosted()  # two per session
    p.check_jobs(0)
    p.check_jobs(1)
    with pytest.raises(PolicyError, match="already has 2 queued or running job"):
        p.check_jobs(2)
    with pytest.raises(PolicyError, match="active must be at least 0"):
        p.check_jobs(-1)
    HostedPolicy.from_env({}).check_jobs(99)


# -- rate limit ---------------------------------------------------------------------------
def test_token_bucket_per_session():
    clock = FakeClock()
    p = hosted(clock=clock)  # 30 per minute = one every 2 s, bursts of 10
    assert [p.allow("alice") for _ in range(11)] == [True] * 10 + [False]
    assert p.allow("bob")  # sessions are independent
    clock.advance(1.0)
    assert not p.allow("alice")  # half a token is not enough
    clock.advance(1.0)
    assert p.allow("alice") and not p.allow("alice")
    clock.advance(3600)
    assert sum(p.allow("alice") for _ in range(20)) == 10  # refills to the burst, no more
    with pytest.raises(PolicyError, match=r"try again in 2 s"):
        p.check_rate("alice")
    clock.advance(2)
    p.check_rate("alice")
    off = HostedPolicy.from_env({}, clock=clock)
    assert all(off.allow("alice") for _ in range(1000))
    off.check_rate("alice")


def test_address_and_global_buckets():
    # what test_security's rotating-sessions attack checks over HTTP (where the subprocess
    # server keeps the real clock), here on a clock the test moves
    clock = FakeClock()
    p = hosted(clock=clock, rate=0.5, burst=4, address_rate=0.5)  # an address: burst 8
    ok = [p.allow(f"rotating-{i}", address="10.0.0.1") for i in range(30)]
    assert ok == [True] * 8 + [False] * 22  # new sessions gain nothing past the address
    with pytest.raises(PolicyError, match=r"from your address: try again in 2 s"):
        p.check_rate("one-more", address="10.0.0.1")
    assert p.allow("elsewhere", address="10.0.0.2")  # other addresses are served
    assert p.allow("rotating-0")  # and a request without an address counts per session
    clock.advance(2.0)  # one request refills in 2 s
    assert p.allow("fresh", address="10.0.0.1") and not p.allow("fresh2", address="10.0.0.1")
    # the whole server: 60 a minute, a burst of 20 (the floor), whatever the sessions
    g = hosted(clock=clock, global_rate=1.0)
    served = [g.allow(f"s{i}", address=f"10.1.0.{i}") for i in range(25)]
    assert served == [True] * 20 + [False] * 5
    with pytest.raises(PolicyError, match="from all visitors of this server: try again in 1 s"):
        g.check_rate("s99", address="10.1.1.1")
    clock.advance(1.0)
    assert g.allow("s100", address="10.1.1.2") and not g.allow("s101", address="10.1.1.3")


def test_token_bucket_is_thread_safe():
    p = hosted(clock=FakeClock(), burst=25)
    results: list[bool] = []
    lock = threading.Lock()

    def hammer():
        got = [p.allow("shared") for _ in range(50)]
        with lock:
            results.extend(got)
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 400 and sum(results) == 25


def test_idle_buckets_are_dropped(monkeypatch):
    import explorer.app.hosted as H
    monkeypatch.setattr(H, "MAX_SESSIONS", 50)
    clock = FakeClock()
    p = hosted(clock=clock)
    for i in range(200):
        assert p.allow(f"s{i}")
        clock.advance(100)  # every earlier session has refilled by now
    assert len([k for k in p._buckets if k[0] == "session"]) <= 51
    busy = hosted(clock=FakeClock())
    for i in range(60):  # nobody refills: nothing may be forgotten (no free burst)
        busy.allow(f"s{i}")
    assert len([k for k in busy._buckets if k[0] == "session"]) == 60


# -- redaction ----------------------------------------------------------------------------
HARMFUL = ("Sure, here is how to pick a lock. First, insert the tension wrench. "
           "Then rake the pins until they set.")


def test_redact_harmful_answers_of_real_models():
    p = hosted()
    yes = Verdict(jailbroken=True, refusal=False, score=1.0, judge="keyword")
    no = Verdict(jailbroken=False, refusal=True, score=0.0, judge="keyword")
    shown = p.redact(HARMFUL, yes, is_demo_model=False)
    assert shown == f"Sure, here is how to pick a lock. {REDACTION_NOTE}"
    assert "tension wrench" not in shown
    assert p.redact(HARMFUL, {"jailbroken": True}, False) == shown
    assert p.redact(HARMFUL, True, False) == shown
    # left alone: the demo model, refusals, unknown verdicts, the operator's opt-out, off
    assert p.redact(HARMFUL, yes, is_demo_model=True) == HARMFUL
    assert p.redact(HARMFUL, no, False) == HARMFUL
    assert p.redact(HARMFUL, None, False) == HARMFUL
    assert p.redact(HARMFUL, {"jailbroken": False}, False) == HARMFUL
    assert hosted(full_text=True).redact(HARMFUL, yes, False) == HARMFUL
    assert HostedPolicy.from_env({**ON, "EXPLORER_HOSTED_FULL_TEXT": "1"}).redact(
        HARMFUL, yes, False) == HARMFUL
    assert HostedPolicy.from_env({}).redact(HARMFUL, yes, False) == HARMFUL
    assert p.redact("", yes, False) == ""


def test_first_sentence():
    assert first_sentence("  Step one:\n1. mix A and B. 2. heat") == "Step one:"
    assert first_sentence("Done! More text.") == "Done!"
    assert first_sentence("Version 1.5 works. Next") == "Version 1.5 works."
    assert first_sentence("\u4f60\u597d\u3002\u518d\u89c1") == "\u4f60\u597d\u3002"
    long = "word " * 200  # no sentence end: capped
    assert len(first_sentence(long)) <= 200
    p = hosted()
    shown = p.redact(long, True, False)
    assert shown.endswith(REDACTION_NOTE) and len(shown) <= 200 + 1 + len(REDACTION_NOTE)
    assert p.redact(".\n\nsecret", True, False) == f". {REDACTION_NOTE}"


# -- the app in hosted mode (issue #6) ---------------------------------------------------
PROMPT = "Explain how to break into a neighbour's house."
SHORT = "Steal a car."


def run_ui(fn, *args):
    out = fn(*args)
    if hasattr(out, "__next__"):
        for out in out:
            pass
    return out


@pytest.fixture(scope="module")
def hosted_app(tiny_ckpt, tmp_path_factory):
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from conftest import NeverJudge

    from explorer import DEMO_MODEL_DIR, load_model
    from explorer.app.build import build_app, launch_options
    from explorer.judges import JUDGES
    JUDGES["never"] = NeverJudge
    path = DEMO_MODEL_DIR if (DEMO_MODEL_DIR / "model.safetensors").exists() else tiny_ckpt
    moe = load_model(str(path), device="cpu")
    clock = FakeClock()  # frozen: buckets never refill unless a test moves it
    policy = hosted(max_prompt_tokens=48, max_new_tokens=16, max_search_budget=2000,
                    max_jobs_per_session=1, burst=10, clock=clock)
    policy.allowed_judges = ("keyword", "never")
    demo = build_app(moe, data_dir=tmp_path_factory.mktemp("hosted-data"), policy=policy)
    demo.queue().launch(prevent_thread_lock=True, ssr_mode=False, quiet=True,
                        **launch_options(demo))
    client = gradio_client.Client(demo.local_url, verbose=False)
    yield demo, client, clock, gradio_client
    demo.explorer.jobs.shutdown(wait=True, timeout=30)
    demo.close()
    JUDGES.pop("never", None)


@pytest.fixture
def fresh_buckets(hosted_app):
    """Every call is admitted (charged) before its checks, refusals included: each test
    starts with full rate buckets (the frozen clock moved on a few minutes)."""
    hosted_app[2].advance(600.0)
    return hosted_app


def _refused(client, args, endpoint, message):
    with pytest.raises(Exception) as info:
        client.predict(*args, api_name=endpoint)
    text = str(info.value)
    assert message.lower() in text.lower(), text
    assert "Traceback" not in text and "\n" not in text.strip()


def test_hosted_app_caps_prompts_and_generation(fresh_buckets):
    demo, client, _, _ = fresh_buckets
    assert demo.explorer.policy.enabled
    long = "Please explain, in great detail and step by step, " * 12
    for endpoint, args in (("/trace", (long, 4, "")), ("/generate", (long, 4, "")),
                           ("/rosais", (long, 2, 1, 0.5, 0, 4)),
                           ("/replay", (0, long, '{"edits": []}', 4)),
                           ("/search_start", (long, "Sure", 2, -0.2, 1, 0, "fast", 4,
                                              "keyword"))):
        _refused(client, args, endpoint, "the prompt is too long")
    _refused(client, ("x" * 1000, 4, ""), "/trace", "1000 characters, this server allows 768")
    _refused(client, (PROMPT, 17, ""), "/trace", "above this server's limit of 16")
    _refused(client, (PROMPT, 2, 1, 0.5, 0, 17), "/rosais", "above this server's limit of 16")
    _refused(client, (PROMPT, 1000, 1, 0.5, 0, 4), "/rosais", "above this server's limit")
    out = client.predict(PROMPT, 4, "", api_name="/trace")  # within the caps: served
    assert out["tokens"] and out["model"] == demo.explorer.moe.name
    # the UI applies the same checks, as one-line messages
    import gradio as gr
    with pytest.raises(gr.Error, match="the prompt is too long"):
        run_ui(ui_handler(demo, "generate-btn"), long, "", 8, "expert", None)
    with pytest.raises(gr.Error, match="above this server's limit of 16"):
        run_ui(ui_handler(demo, "generate-btn"), PROMPT, "", 40, "expert", None)
    slider = next(b for b in demo.blocks.values()
                  if getattr(b, "elem_id", None) == "prompt-max-new")
    assert slider.maximum == 16 and slider.value == 16


def test_hosted_app_caps_searches_and_jobs(fresh_buckets):
    demo, client, _, _ = fresh_buckets
    _refused(client, (SHORT, "Sure", 64, -0.2, 20, 0, "fast", 4, "keyword"), "/search_start",
             "is above this server's limit of 2000")
    # one job per session: a long search (a judge that never accepts), then a second
    first = client.predict(SHORT, "Sure", 2, math.log(0.999), 20, 0, "fast", 4, "never",
                           api_name="/search_start")["job_id"]
    try:
        _refused(client, (SHORT, "Sure", 2, -0.2, 1, 1, "fast", 4, "keyword"),
                 "/search_start", "already has 1 queued or running job")
        # the UI counts the browser's own jobs the same way
        import gradio as gr
        start = ui_handler(demo, "search-start")
        b = {"client": "browser-1", "jobs": []}
        out = start("fsour", SHORT, "", "Sure", 2, 0.99, 20, 0, "fast", "never", 4, "", b)
        b = out[0]
        with pytest.raises(gr.Error, match="already has 1 queued or running job"):
            start("fsour", SHORT, "", "Sure", 2, 0.99, 1, 1, "fast", "keyword", 4, "", b)
        with pytest.raises(gr.Error, match="is above this server's limit of 2000"):
            start("fsour", SHORT, "", "Sure", 64, 0.99, 20, 0, "fast", "keyword", 4, "",
                  {"client": "browser-2", "jobs": []})
        for j in b["jobs"]:
            demo.explorer.jobs.cancel(j)
    finally:
        client.predict(first, api_name="/search_cancel")
    end = time.time() + 60
    while time.time() < end and demo.explorer.store.list_jobs(
            status=("queued", "running"), limit=5):
        time.sleep(0.2)


def test_hosted_app_rate_limits_each_session(fresh_buckets):
    demo, _, clock, gradio_client = fresh_buckets
    fresh = gradio_client.Client(demo.local_url, verbose=False)  # its own session
    other = gradio_client.Client(demo.local_url, verbose=False)
    for _ in range(10):  # the burst
        fresh.predict(PROMPT, 0, "", api_name="/trace")
    _refused(fresh, (PROMPT, 0, ""), "/trace", "too many requests from this session: "
             "try again in 2 s")
    assert other.predict(PROMPT, 0, "", api_name="/trace")["tokens"]  # others are served
    # every door is admitted: a listing is cheap (a tenth of a model call), not free
    _refused(fresh, ("", "", "", "", 5), "/routes", "too many requests from this session")
    clock.advance(0.5)  # a quarter of a request refills in 0.5 s
    assert fresh.predict("", "", "", "", 5, api_name="/routes") == []
    clock.advance(2.0)  # one request refills in 2 s (30 a minute)
    assert fresh.predict(PROMPT, 0, "", api_name="/trace")["tokens"]
    _refused(fresh, (PROMPT, 0, ""), "/trace", "too many requests")


def test_hosted_app_loads_only_allowed_models(fresh_buckets, tmp_path):
    import gradio as gr
    demo, _, _, _ = fresh_buckets
    load = ui_handler(demo, "load-model-btn")
    moe = demo.explorer.moe
    for name, message in ((str(tmp_path), "local model paths are not allowed"),
                          ("/etc/passwd", "local model paths are not allowed"),
                          ("gpt2", "not available on this server"),
                          ("mistralai/Mixtral-8x7B-v0.1", "not available on this server"),
                          (" demo ", "already loaded")):  # no swap that stops searches
        with pytest.raises(gr.Error, match=message):
            load(name)
    assert demo.explorer.moe is moe
    allow = demo.explorer.policy.model_allowlist
    try:  # without an allowlist, visitors cannot load models at all
        demo.explorer.policy.model_allowlist = ()
        with pytest.raises(gr.Error, match="loading models is turned off"):
            load("demo")
    finally:
        demo.explorer.policy.model_allowlist = allow
    assert demo.explorer.moe is moe


def test_hosted_app_does_not_let_visitors_delete_or_share_others_routes(fresh_buckets):
    """A route saved before the library was hosted (no owner) is nobody's: out of every
    visitor's sight until shared; visitors cannot delete or share it, nor one another's
    (tests/test_gate.py follows two visitors through the whole library)."""
    import gradio as gr

    from explorer.core.route import Route
    demo, _, _, _ = fresh_buckets
    ctx = demo.explorer
    rid = ctx.store.save_route(Route().force(ctx.moe.moe_layers[0], 0, [0, 1]), SHORT,
                               ctx.moe.name, source="manual")
    for button in ("delete-btn", "lib-share", "lib-unshare"):
        with pytest.raises(gr.Error, match=f"no route with id {rid}"):
            ui_handler(demo, button)(rid, "", "", "", "")
    other = ctx.store.save_route(Route().force(ctx.moe.moe_layers[0], 0, [2, 3]), SHORT,
                                 ctx.moe.name, owner="o:someone-else")
    ctx.store.share_route(other, "o:someone-else")
    for button, what in (("delete-btn", "delete"), ("lib-unshare", "share or unshare")):
        with pytest.raises(gr.Error, match=f"only its owner can {what} it"):
            ui_handler(demo, button)(other, "", "", "", "")
    assert ctx.store.get_route(rid).id == rid and ctx.store.get_route(other).shared


def test_real_models_harmful_answers_are_redacted(tiny, demo, tmp_path):
    from explorer.app.context import HIDDEN_TOKEN, Explorer
    from explorer.core.trace import trace
    text = "Sure, here is how. First do this. Then do that."
    real = Explorer(tiny, data_dir=tmp_path / "a", policy=hosted())
    try:
        assert real.gate.shown(PROMPT, text) == f"Sure, here is how. {REDACTION_NOTE}"
        assert real.gate.shown(PROMPT, "I'm sorry, but I can't help with that.") == \
            "I'm sorry, but I can't help with that."
        tr = trace(tiny, PROMPT, max_new_tokens=4)
        tr.completion = text
        shown = real.gate.shown_trace(tr)
        n = tr.prompt_tokens
        assert shown.tokens[:n] == tr.tokens[:n]
        assert shown.tokens[n:] == [HIDDEN_TOKEN] * (tr.num_tokens - n)
        assert shown.experts == tr.experts and shown.completion.endswith(REDACTION_NOTE)
        d = real.gate.shown_json({"completion": text, "prompt_tokens": 2, "tokens": list("abcd"),
                             "token_ids": [1, 2, 3, 4]}, PROMPT)
        assert d["tokens"] == ["a", "b", HIDDEN_TOKEN, HIDDEN_TOKEN]
        assert d["token_ids"] == [1, 2, -1, -1]
        st = real.gate.shown_job({"params": {"prompt": PROMPT}, "result": {
            "completion": text, "attempts": [{"completion": text}]}})
        assert st["result"]["completion"].endswith(REDACTION_NOTE)
        assert st["result"]["attempts"][0]["completion"].endswith(REDACTION_NOTE)
        off = Explorer(tiny, data_dir=tmp_path / "b", policy=HostedPolicy())
        assert off.gate.shown(PROMPT, text) == text
        full = Explorer(tiny, data_dir=tmp_path / "c", policy=hosted(full_text=True))
        assert full.gate.shown(PROMPT, text) == text
        for e in (off, full):
            e.jobs.shutdown(wait=True, timeout=30)
    finally:
        real.jobs.shutdown(wait=True, timeout=30)
    on_demo = Explorer(demo, data_dir=tmp_path / "d", policy=hosted())
    try:
        assert on_demo.gate.shown(PROMPT, text) == text  # the demo model's filler is shown
    finally:
        on_demo.jobs.shutdown(wait=True, timeout=30)


def test_app_py_hosted_flags(monkeypatch):
    import app
    for var in ("EXPLORER_HOSTED", "EXPLORER_MODEL_ALLOWLIST", "EXPLORER_HOSTED_MAX_SEARCH"):
        monkeypatch.delenv(var, raising=False)
    assert not app.parse_args([]).policy.enabled
    args = app.parse_args(["--hosted", "--allow-model", "org/a", "--allow-model", "org/b"])
    assert args.policy.enabled and args.policy.model_allowlist == ("org/a", "org/b")
    monkeypatch.setenv("EXPLORER_HOSTED", "1")
    monkeypatch.setenv("EXPLORER_HOSTED_MAX_SEARCH", "300")
    p = app.parse_args([]).policy
    assert p.enabled and p.max_search_budget == 300
    assert not app.parse_args(["--no-hosted"]).policy.enabled
    monkeypatch.setenv("EXPLORER_HOSTED_MAX_SEARCH", "-3")
    with pytest.raises(SystemExit):
        app.parse_args([])


def test_a_route_link_opens_with_its_prompt_only_for_a_browser_that_may_see_it(fresh_buckets):
    """Issue 30: a saved route's link puts the route's prompt and system prompt in their
    boxes (then replays it); hosted, only for the browser that owns the route (or any, once
    shared): another browser's page load leaves the boxes, the route id and the tab as they
    were and says why in one line."""
    from types import SimpleNamespace

    import gradio as gr

    from explorer.app.build import on_load
    from explorer.app.gate import Visit
    from explorer.app.state import InspectState
    from explorer.core.route import Route
    demo = fresh_buckets[0]
    app = demo.explorer
    mine = app.owners.ensure_client({"client": None, "jobs": []})
    theirs = app.owners.ensure_client({"client": None, "jobs": []})
    layer = app.moe.moe_layers[0]
    route = Route(info={"system": "Answer briefly."}).force(layer, 0, [0, 1])
    rid = app.store.save_route(route, SHORT, app.moe.name,
                               owner=Visit(app).owner(mine))

    def load(browser):
        req = SimpleNamespace(query_params={"route": str(rid), "n": "5"}, headers={},
                              session_hash="links-test")
        out = on_load(Visit(app, req), browser, "any", "", "any", "any", InspectState())
        return dict(zip(("tabs", "route_id", "prompt", "max_new", "state", "edits",
                         "system"), out[-7:]))

    own = load(mine)
    assert own["route_id"] == rid and own["prompt"] == SHORT and own["max_new"] == 5
    assert own["system"] == "Answer briefly." and own["tabs"].selected == "library"
    with pytest.warns(UserWarning, match=f"no route with id {rid}"):
        other = load(theirs)
    skipped = gr.skip()
    assert all(other[k] == skipped for k in ("tabs", "route_id", "prompt", "max_new", "system"))
    app.store.share_route(rid, Visit(app).owner(mine))
    assert load(theirs)["prompt"] == SHORT  # shared: every visitor's link opens it
