""""Why it flips", inside Inspect beside the two answers: the top next-token probabilities at
the first answer tokens, baseline vs re-routed, and the logit lens at one of them (the
residual stream after each decoder layer through the final norm and LM head).

Library functions: :func:`explorer.core.lens.next_tokens` and
:func:`explorer.core.lens.logit_lens`; the figure: :func:`explorer.viz.results.lens_heatmap`.
Only the first :data:`ANSWER_TOKENS` answer tokens are read; where a hosted server shortens
an answer (a real model's jailbroken one) the panel shows nothing of it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app.errors import fail
from explorer.app.gate import Door, Event, Visit
from explorer.app.inputs import whole_number
from explorer.app.state import InspectState
from explorer.core.lens import NextTokens, logit_lens, next_tokens
from explorer.viz.figures import empty_figure, token_label
from explorer.viz.results import lens_heatmap

#: How many answer tokens' distributions are shown.
ANSWER_TOKENS = 4


@dataclass
class WhyUI:
    """The panel's components."""

    token: Any
    btn: Any
    table: Any
    lens: Any


def layout() -> WhyUI:
    """The panel (an accordion, inside the Inspect tab)."""
    with gr.Accordion("Why it flips: next-token probabilities and logit lens", open=False,
                      elem_id="why-flips"):
        with gr.Row():
            token = gr.Number(0, label=f"answer token (0..{ANSWER_TOKENS - 1}) for the lens",
                              precision=0, minimum=0, maximum=ANSWER_TOKENS - 1,
                              min_width=160, elem_id="why-token")
            btn = gr.Button("Explain", elem_id="why-btn", scale=0, min_width=140)
        table = gr.HTML("", elem_id="why-table")
        lens = gr.Plot(empty_figure("Generate (and re-run) first, then press Explain"),
                       label="Logit lens", elem_id="why-lens")
    return WhyUI(token, btn, table, lens)


def _cell(nt: NextTokens | None, j: int) -> str:
    if nt is None or j >= len(nt.positions):
        return "<td>—</td>"
    chosen = nt.chosen[j]
    head = ("(end)" if chosen is None else
            f"<b>{html.escape(token_label(chosen))}</b> {nt.chosen_probs[j]:.3f}")
    tops = " · ".join(f"{html.escape(token_label(t))} {p:.3f}"
                      for t, p in zip(nt.top[j].tokens, nt.top[j].probs))
    return f"<td>{head}<br><span class='sse-lp'>{tops}</span></td>"


def next_tokens_html(base: NextTokens, alt: NextTokens | None) -> str:
    """A table: for each answer token, the token each answer took (bold, with its
    probability) and the top-k it was picked from, baseline and re-routed."""
    rows = "".join(f"<tr><td>{j}</td>{_cell(base, j)}{_cell(alt, j)}</tr>"
                   for j in range(len(base.positions)))
    return ("<table class='sse-table' id='why-next-tokens'><thead><tr><th>answer token</th>"
            "<th>baseline: chosen (P) and top 5</th><th>re-routed: chosen (P) and top 5</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>")


def explain(visit: Visit, token_v, st: InspectState):
    """Why it flips: (the next-token table, the logit-lens heatmap) of the baseline and
    the re-routed answer (when there is one) at answer token ``token_v``."""
    moe = visit.moe
    st = st or InspectState()
    j = whole_number(token_v, "answer token", 0, ANSWER_TOKENS - 1)
    if st.base is None:
        fail("Generate first: there is no answer to explain.")
    shown = [("baseline", st.base)] + ([("re-routed", st.alt)] if st.alt is not None else [])
    for name, tr in shown:  # hosted: an answer this server shortens shows no tokens here
        if visit.app.gate.shown_trace(tr) is not tr:
            fail(f"This server shows only the first sentence of the {name} answer, so "
                 "its tokens and their probabilities are not shown either.")
    tables, lenses = [], []
    for _, tr in shown:
        tables.append(next_tokens(moe, tr.token_ids, tr.prompt_tokens, tr.route,
                                  count=ANSWER_TOKENS))
        pos = min(tr.prompt_tokens - 1 + j, tr.num_tokens - 1)
        lenses.append(logit_lens(moe, tr.token_ids, pos, tr.route))
    return (next_tokens_html(tables[0], tables[1] if len(tables) > 1 else None),
            lens_heatmap(lenses, [name for name, _ in shown]))


def events(ui: WhyUI, state) -> list[Event]:
    """The panel's events; ``state``: Inspect's state."""
    return [Event(ui.btn.click, explain, [ui.token, state], [ui.table, ui.lens],
                  Door("Why it flips", "model", gpu=60))]
