"""The bundled demo model: a tiny safety-aligned OLMoE chat model trained from scratch.

``python -m explorer.demo build`` regenerates ``assets/demo-model`` offline on CPU:
:mod:`~explorer.demo.corpus` (harmless-by-construction chat corpus) ->
:mod:`~explorer.demo.tokenizer` (byte-level BPE + chat template) ->
:mod:`~explorer.demo.train` -> :mod:`~explorer.demo.evaluate` (+ model card, SHA256SUMS).
"""
