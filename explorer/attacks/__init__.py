"""Attacks as plugins (see :mod:`explorer.attacks.base`).

The built-in attacks, in the order the CLI and the app list them: ``none``
(:mod:`~explorer.attacks.plain`), ``rosais``, ``fsour``, ``steer``, ``random``
(:mod:`~explorer.attacks.random_routes`), ``replay``, ``safex`` (SAFEx-style stable expert
masking) and ``l3`` (L3-style adaptive expert silencing). Another package adds one with
:func:`register_attack` (the ``EXPLORER_PLUGINS`` setting names modules the entry points
import first, so the CLI and the app find it)::

    from dataclasses import dataclass
    from explorer.attacks import Attack, Outcome, answer, register_attack
    from explorer.core.params import Params, param

    @dataclass(frozen=True)
    class ShoutParams(Params):
        times: int = param(1, "how many times to shout", lo=1, hi=10)

    @register_attack
    class Shout(Attack):
        name, label, summary, Params = "shout", "shout", "the prompt in capitals", ShoutParams

        def run(self, moe, case, params, run) -> Outcome:
            return answer(moe, case.text.upper() * params.times, None, run)
"""

from __future__ import annotations

from explorer.attacks import fsour as _fsour
from explorer.attacks import l3 as _l3
from explorer.attacks import plain as _plain
from explorer.attacks import random_routes as _random
from explorer.attacks import replay as _replay
from explorer.attacks import rosais as _rosais
from explorer.attacks import safex as _safex
from explorer.attacks import steer as _steer
from explorer.attacks.base import (
    Attack,
    Case,
    Outcome,
    Remembered,
    Run,
    Shape,
    answer,
    attack_help,
    get_attack,
    list_attacks,
    load_plugins,
    register_attack,
    registry_version,
    unregister_attack,
)

for _cls in (_plain.NoAttack, _rosais.RosaisAttack, _fsour.FsourAttack, _steer.SteerAttack,
             _random.RandomAttack, _replay.ReplayAttack, _safex.SafexAttack, _l3.L3Attack):
    register_attack(_cls, replace=True)

__all__ = ["Attack", "Case", "Outcome", "Remembered", "Run", "Shape", "answer", "attack_help",
           "get_attack", "list_attacks", "load_plugins", "register_attack", "registry_version",
           "unregister_attack"]
