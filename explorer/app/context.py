"""The app's context: :class:`Explorer` puts together the model host (the model, the route
library and the job manager: :mod:`explorer.app.host`), the owners of background searches
(:mod:`explorer.app.owners`) and the gate every request enters through
(:mod:`explorer.app.gate`). Views receive it through their :class:`~explorer.app.gate.Visit`
(``visit.app``); tests and scripts build one directly."""

from __future__ import annotations

import os
from typing import Any

from explorer.app.gate import HIDDEN_TOKEN, Gate  # noqa: F401  (HIDDEN_TOKEN: public here)
from explorer.app.host import ModelHost, data_folder
from explorer.app.hosted import HostedPolicy
from explorer.app.owners import Owners
from explorer.core.model import MoEModel
from explorer.settings import Settings


class Explorer:
    """The model host (``host``), the owners (``owners``) and the gate (``gate``) of one app,
    under one hosted-mode ``policy`` (off unless ``policy.enabled``) and ``settings``.

    ``model``: a hub id, a local folder, a loaded :class:`MoEModel` or None (the demo model);
    ``data_dir``: the route library's folder (default: the settings'). If the model cannot
    be loaded the app still starts: ``moe`` is None and ``error`` says why.
    """

    def __init__(self, model: str | MoEModel | None = None,
                 data_dir: str | os.PathLike | None = None, device: str = "auto",
                 policy: HostedPolicy | None = None, settings: Settings | None = None):
        self.settings = settings if settings is not None else Settings()
        policy = policy if policy is not None else self.settings.policy
        self.policy = policy if policy is not None else HostedPolicy()
        self.data_dir = data_folder(data_dir, self.settings)
        self.host = ModelHost(model, data_dir=self.data_dir, device=device,
                              settings=self.settings, policy=self.policy)
        self.owners = Owners(self.data_dir)
        self.gate = Gate(self)

    # the host's parts, read often
    @property
    def moe(self) -> MoEModel | None:
        """The loaded model (None: none)."""
        return self.host.moe

    @property
    def store(self):
        """The route library."""
        return self.host.store

    @property
    def jobs(self):
        """The background job manager."""
        return self.host.jobs

    @property
    def error(self) -> str | None:
        """Why no model is loaded (None when one is)."""
        return self.host.error

    def load_model(self, name: str | None) -> MoEModel:
        """Load ``name`` with this app's settings (see :meth:`ModelHost.load_model`)."""
        return self.host.load_model(name)

    def set_model(self, moe: MoEModel) -> None:
        """Make ``moe`` the app's model (see :meth:`ModelHost.set_model`)."""
        self.host.set_model(moe)

    def owner(self, request: Any = None, client: str | None = None) -> str:
        """A caller's owner key (see :meth:`Owners.owner`)."""
        return self.owners.owner(request, client)
