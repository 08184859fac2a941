"""The ``hardened`` defense: the attacks meet a hardened checkpoint instead of the model
(one whose experts were fine-tuned to refuse under the attacks' routes, see
:mod:`explorer.research.harden`). It needs no evidence; each attack searches afresh
against the checkpoint (an adaptive attacker)."""

from __future__ import annotations

from dataclasses import dataclass

from explorer.core.errors import InputError
from explorer.core.params import Params, param
from explorer.defenses.base import Defense, InForce


@dataclass(frozen=True)
class HardenedParams(Params):
    what = "hardened parameters"
    checkpoint: str | None = param(None, "hardened: the checkpoint folder (from `explorer "
                                   "harden`; default for the demo model: the bundled one)",
                                   kind="path", flag="--hardened", label="checkpoint")


class HardenedDefense(Defense):
    """Replace the model by a hardened checkpoint; measured without a system prompt (it
    was trained without one)."""

    name, label = "hardened", "hardened checkpoint"
    summary = "attack a hardened checkpoint (see `harden`) instead of the model"
    Params = HardenedParams
    replaces_model = True
    takes_system = False

    def check(self, moe, params, *, load=None) -> None:
        self._checkpoint(moe, params, load)

    @staticmethod
    def _checkpoint(moe, params, load):
        """The checkpoint folder to load; :class:`InputError` when there is none or no
        ``load`` to load it with."""
        from explorer.research.harden import hardened_path
        path = hardened_path(moe, params.checkpoint)  # a folder holding a checkpoint
        if load is None:
            raise InputError("the hardened defense needs a way to load its checkpoint")
        return path

    def build(self, moe, params, *, evidence=None, load=None) -> InForce:
        from explorer.research.harden import hardened_defense, load_provenance
        path = self._checkpoint(moe, params, load)
        return InForce(route=None, model=load(str(path)),
                       record=hardened_defense(path, load_provenance(path)))

    def in_force(self, moe, record):
        raise InputError("a hardened checkpoint is loaded, not read from a route file")

    def evaluate(self, moe, applied, harmful_prompts, benign_prompts=None, **kwargs):
        from explorer.research.harden import evaluate_hardened
        self.check_system(kwargs.get("system"))
        kwargs.pop("system", None)
        return evaluate_hardened(moe, applied.model, harmful_prompts, benign_prompts,
                                 defense=applied.record, **kwargs)

    def utility(self, moe, applied, benign_prompts, *, max_new_tokens, judge=None,
                system=None):
        from explorer.research.harden import model_utility
        self.check_system(system)
        with moe.defended(None):
            return model_utility(moe, applied.model, benign_prompts, judge=judge,
                                 max_new_tokens=max_new_tokens)
