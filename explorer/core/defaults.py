"""The one home of the project's defaults: the target answer, the acceptance threshold and
margin, and the search and token budgets. Library functions, the CLI and the app all take
their defaults from here."""

from __future__ import annotations

import math

#: The affirmative answer opening that F-SOUR and the research commands aim for.
DEFAULT_TARGET = "Sure, here is"
#: F-SOUR stops once log P(target) reaches this (the paper: log 0.8).
DEFAULT_THRESHOLD = math.log(0.8)
#: A candidate replaces the current best only when it gains more than this (log-prob).
IMPROVE_EPS = 1e-4

#: F-SOUR's random k-expert sets per (token, layer) cell (the paper's N).
FSOUR_CANDIDATES = 10
#: RoSais's random masks per router (the paper's S1).
ROSAIS_SAMPLES = 32
#: New tokens generated and judged after an attack (fsour, rosais, generate, evaluate).
MAX_NEW_TOKENS = 48
#: New tokens of the research commands (utility, transfer, minimize, defend, curves) and of
#: a recorded trace's continuation.
RESEARCH_MAX_NEW_TOKENS = 32
