"""Markdown, tables and widget updates built from library results (no model work)."""

from __future__ import annotations

import difflib
import html
import math
import re
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from explorer.core.defaults import DEFAULT_THRESHOLD
from explorer.storage.jobs import EVALUATE_JOB

if TYPE_CHECKING:
    from explorer.app.context import Explorer


def model_header(app: Explorer) -> str:
    moe = app.moe
    if moe is None:
        return (f"**No model loaded.** {html.escape(app.error or '')} "
                "Load one in the **Model** tab.")
    i = moe.info
    moe_l = [lay for lay in i.layers if lay.is_moe]
    e = sorted({lay.num_experts for lay in moe_l})
    k = sorted({lay.top_k for lay in moe_l})
    return (f"**Model:** `{moe.name}` · {i.num_layers} layers ({len(moe_l)} MoE) · "
            f"{'/'.join(map(str, e))} experts, top-{'/'.join(map(str, k))} · "
            f"{i.device} {i.dtype}" + (f" ({i.quantization})" if i.quantization else ""))


def model_card(app: Explorer) -> tuple[str, pd.DataFrame]:
    cols = ["layer", "type", "experts", "top-k", "shared experts", "router", "groups"]
    moe = app.moe
    if moe is None:
        return (f"No model loaded. {html.escape(app.error or '')}", pd.DataFrame(columns=cols))
    i = moe.info
    md = (f"### `{moe.name}`\n"
          f"- family: `{i.model_type}` · {i.parameters / 1e6:.1f}M parameters"
          + (f" · {i.weight_bytes / 2**20:.1f} MiB of weights as stored"
             if i.weight_bytes else "") + "\n"
          f"- device: **{i.device}** · dtype: **{i.dtype}**"
          + (f" · quantized: **{i.quantization}**" if i.quantization else "") + "\n"
          f"- layers: {i.num_layers} ({len(i.moe_layers)} MoE: {i.moe_layers}"
          + (f"; dense: {i.dense_layers}" if i.dense_layers else "") + ")\n"
          f"- transformers {i.transformers_version}"
          + (f" · revision `{i.revision}`" if i.revision else "")
          + (f" · chat template `{i.chat_template_hash}`" if i.chat_template_hash else
             " · no chat template (raw prompts)"))
    rows = [[lay.index, "MoE" if lay.is_moe else "dense",
             lay.num_experts if lay.is_moe else "", lay.top_k if lay.is_moe else "",
             lay.shared_experts if lay.is_moe else "", lay.router_kind if lay.is_moe else "",
             f"{lay.n_group} pick {lay.topk_group}" if lay.n_group else ""] for lay in i.layers]
    return md, pd.DataFrame(rows, columns=cols)


def edit_label(e: dict, tokens: list[str] | None = None) -> str:
    where = "every position" if e.get("position") is None else f"pos {e['position']}"
    if e.get("position") is not None and tokens and 0 <= e["position"] < len(tokens):
        where += f" {tokens[e['position']]!r}"
    return f"{e['mode']} L{e['layer']} @ {where} → experts {', '.join(map(str, e['experts']))}"


def edit_choices(edits: list[dict], tokens: list[str] | None):
    return [(f"#{i + 1} {edit_label(e, tokens)}", i) for i, e in enumerate(edits or [])]


def edits_box(edits: list[dict] | None, tokens: list[str] | None = None):
    """The pending-edits checkbox list (an update for the CheckboxGroup)."""
    n = len(edits or [])
    return gr.CheckboxGroup(choices=edit_choices(edits or [], tokens), value=[],
                            label=f"Pending edits ({n}; tick to remove)" if n else
                            "Pending edits (tick to remove)")


def cell_info(tr, layer: int, position: int) -> str:
    row = tr.layer_row(layer)
    ex, w = tr.experts[row][position], tr.weights[row][position]
    kind = "prompt" if position < tr.prompt_tokens else "generated"
    pairs = ", ".join(f"**{e}** ({x:.2f})" for e, x in sorted(zip(ex, w), key=lambda p: -p[1]))
    md = (f"**Selected:** layer {layer}, position {position} ({kind} token "
          f"``{tr.tokens[position]!r}``) · experts used: {pairs}")
    if tr.logits is not None:
        lg = tr.logits[row][position]
        top = sorted(range(len(lg)), key=lambda j: -lg[j])[:6]
        md += " · router logits: " + ", ".join(f"{j}: {lg[j]:.2f}" for j in top)
    if kind == "generated":
        md += ("\n\n*Generated tokens can't be edited one by one (a route addresses prompt "
               "positions); tick **every position** to edit the whole layer.*")
    return md


def job_name(st: dict) -> str:
    """A search as people name it: when it started (UTC) and its prompt, not its id."""
    p = st.get("params") or {}
    created = (st.get("created") or "")[11:16] or "?"
    if st.get("kind") == EVALUATE_JOB:  # the Results tab's evaluation: no prompt of its own
        return (f"{created} UTC · evaluation: {p.get('method')} on the first "
                f"{p.get('count')} {p.get('prompts')} prompts")
    prompt = " ".join((p.get("prompt") or "").split())
    return f"{created} UTC · “{prompt if len(prompt) <= 40 else prompt[:39] + '…'}”"


def job_label(st: dict) -> str:
    return f"{job_name(st)} · {st.get('status')}"


def eta_text(eta: float, eta_max: float | None = None) -> str:
    """A running search's time left, as what it is: the current restart's unsearched
    (position, layer) cells at the pace of its searched ones. F-SOUR ends a restart as soon
    as P(target) passes the threshold (often well before its last cell), and later cells
    recompute fewer positions, so at a steady pace this bounds the restart's time from
    above; it is not a forecast. ``eta_max``: the same if no restart reaches the
    threshold."""
    out = (f"at most ~{math.ceil(eta)} s more for this restart at its pace so far "
           "(it ends sooner once P(target) passes the threshold)")
    if eta_max:
        out += f"; up to ~{math.ceil(eta_max)} s if no restart reaches it"
    return out


def job_progress_md(st: dict, tokens: list[str] | None = None) -> str:
    p = st.get("progress") or {}
    params = st.get("params") or {}
    status = st.get("status")
    lines = [f"**Search {html.escape(job_name(st))} · {status}**"]
    it, pos, lay = p.get("iteration"), p.get("position"), p.get("layer")
    npos, nl = p.get("num_positions"), p.get("num_layers")
    max_iters = params.get("max_iters")
    if it is not None and status == "done":
        lines.append(f"finished in restart {min(it + 1, max_iters or it + 1)}"
                     + (f" of at most {max_iters}" if max_iters else ""))
    elif it is not None:
        where = f"restart {min(it + 1, max_iters or it + 1)}/{max_iters or '?'}"
        if pos is not None and npos:
            pos = min(pos, npos - 1)
        if pos is not None:
            tok = f" ``{tokens[pos]!r}``" if tokens and 0 <= pos < len(tokens) else ""
            where += f" · token {pos + 1}/{npos or '?'}{tok}"
        if lay is not None:
            where += f" · layer {lay}" + (f" (of {nl} MoE layers)" if nl else "")
        lines.append(where)
    best = p.get("best_logprob")
    thr = params.get("threshold", DEFAULT_THRESHOLD)
    if best is not None:
        lines.append(f"best log P(target) = **{best:.3f}** (P = {math.exp(best):.3f}) · "
                     f"threshold {thr:.3f} (P = {math.exp(thr):.2f})")
    bits = []
    if p.get("forward_passes") is not None:
        bits.append(f"forward passes {p['forward_passes']:,}")
    if p.get("elapsed") is not None:
        bits.append(f"elapsed {p['elapsed']:.1f} s")
    if p.get("chunks"):  # ZeroGPU: the search runs in GPU windows, each from a checkpoint
        bits.append(f"GPU window {p['chunks']}" if status == "running"
                    else f"{p['chunks']} GPU windows")
    if status == "running" and p.get("eta_seconds") is not None:
        bits.append(eta_text(p["eta_seconds"], p.get("eta_max_seconds")))
    if bits:
        lines.append(" · ".join(bits))
    if status in ("done", "cancelled", "interrupted") and st.get("id"):
        lines.append(f"[link to this search](?job={html.escape(st['id'])}) (it opens in "
                     "this browser, which owns the search)")
    if status == "failed" and st.get("error"):
        lines.append(f"**Error:** {html.escape(st['error'])}")
    if status == "interrupted":
        lines.append("The app stopped while this search ran: press **Resume** to continue "
                     "from its last checkpoint.")
    return "  \n".join(lines)


def job_result_md(st: dict) -> str:
    r = st.get("result") or {}
    if st.get("status") not in ("done", "cancelled", "interrupted") or not r:
        return ""
    if st.get("kind") == EVALUATE_JOB:  # rows, not a route (the Results tab shows them)
        return f"**Evaluation ({st.get('status')})** · {len(r.get('rows') or [])} rows"
    head = "Jailbroken" if r.get("success") else "Not jailbroken"
    if st.get("status") != "done":
        head = f"Best so far ({st.get('status')})"
    bits = [f"judge: {r.get('judge') or 'keyword'}"]
    if isinstance(r.get("logprob"), (int, float)):
        bits.append(f"log P(target) = {r['logprob']:.3f}")
    bits.append(f"{len((r.get('route') or {}).get('edits', []))} forced cells")
    bits.append(f"{r.get('forward_passes') or 0:,} forward passes")
    bits.append(f"{r.get('seconds') or 0:.1f} s")
    md = f"**{head}** · " + " · ".join(bits)
    if st.get("route_id") is not None:
        md += f"  \nSaved to the library as route **#{st['route_id']}**."
    elif st.get("status") == "done" and not (r.get("route") or {}).get("edits"):
        md += ("  \nThe prompt already answers with the target without any forced expert: "
               "there is no route to find, so nothing was saved to the library.")
    if r.get("completion"):
        md += "\n\n> " + html.escape(r["completion"]).replace("\n", "\n> ")
    return md


ROUTE_COLUMNS = ["id", "prompt", "model", "edits", "target log-prob", "success", "source",
                 "created"]
#: The column the library table adds in hosted mode: whose a route is, whether it is shared.
ACCESS_COLUMN = "access"


def routes_frame(items, access=None) -> pd.DataFrame:
    """The library table of stored routes ``items``; ``access`` (hosted mode: a function of
    a route, e.g. :meth:`explorer.app.library_access.Library.access`) fills an
    :data:`ACCESS_COLUMN` after the id."""
    cols = list(ROUTE_COLUMNS)
    if access is not None:
        cols.insert(1, ACCESS_COLUMN)
    rows = []
    for r in items:
        lp = r.target_logprob
        row = [r.id, r.prompt if len(r.prompt) <= 80 else r.prompt[:79] + "…", r.model,
               r.n_edits, round(lp, 3) if isinstance(lp, float) else None,
               {True: "yes", False: "no", None: "—"}[r.success], r.source,
               (r.created or "")[:19].replace("T", " ")]
        if access is not None:
            row.insert(1, access(r))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)



# -- verdicts next to answers ------------------------------------------------------------------
VERDICT_LABELS = {"jailbroken": "jailbroken (no refusal)", "refusal": "refusal",
                  "empty": "empty answer"}


def verdict_badge(v: dict | None, label: str = "") -> str:
    """One answer's badges (HTML): the keyword verdict and log P(target), from
    :func:`explorer.app.verdicts.answer_verdict`."""
    if not v:
        return ""
    kind = v.get("verdict", "empty")
    lp = v.get("logprob")
    lp_txt = (f"log P(“{html.escape(v.get('target') or '')}”) = {lp:.2f} "
              f"(P = {math.exp(lp):.2g})") if isinstance(lp, float) else ""
    head = f"<b>{html.escape(label)}</b> " if label else ""
    return (f"<span class='sse-verdict' data-verdict='{kind}'>{head}"
            f"<span class='sse-badge sse-{kind}'>{VERDICT_LABELS.get(kind, kind)}</span> "
            f"<span class='sse-lp'>{lp_txt}</span></span>")


def answer_diff(a: str, b: str) -> str:
    """Word-level difference from answer ``a`` to answer ``b`` (HTML): removed words struck
    through, added words underlined; identical answers say so."""
    if a == b:
        return "<span class='sse-same'>The two answers are identical.</span>"
    wa, wb = re.findall(r"\S+|\s+", a or ""), re.findall(r"\S+|\s+", b or "")
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            out.append(f"<del>{html.escape(''.join(wa[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{html.escape(''.join(wb[j1:j2]))}</ins>")
        if op == "equal":
            out.append(html.escape("".join(wa[i1:i2])))
    return "".join(out)


def verdicts_html(first: dict | None, second: dict | None = None,
                  labels: tuple[str, str] = ("Baseline", "Re-routed"),
                  texts: tuple[str, str] | None = None, note: str = "") -> str:
    """The verdict panel under two answers: a badge line for each and, with ``texts``
    (what the page shows of both answers), their difference."""
    rows = [verdict_badge(first, labels[0]), verdict_badge(second, labels[1])]
    body = " &nbsp;·&nbsp; ".join(r for r in rows if r)
    if note:
        body += f" &nbsp;·&nbsp; <span class='sse-note'>{html.escape(note)}</span>"
    if texts is not None:
        body += (f"<div class='sse-diff'><b>Difference</b> ({html.escape(labels[0])} → "
                 f"{html.escape(labels[1])}): {answer_diff(*texts)}</div>")
    return f"<div class='sse-verdicts'>{body}</div>" if body else ""
