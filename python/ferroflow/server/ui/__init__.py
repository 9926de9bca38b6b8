"""The web UI: server-rendered pages (Jinja2 templates, SVG pictures, a little plain
JavaScript for live updates, no build step, nothing fetched from the internet).

Mounted at ``/`` by the server (:func:`ferroflow.server.app.create_app`) and served
over the local run store by ``ferroflow ui`` (:class:`ferroflow.ui.RunStoreUI`): the
same routes either way.

Pages (each has a JSON twin: ``?format=json``, or the same path under ``/api``):

- ``/``: the dashboard (recent runs, failures over a day and a week, upcoming
  scheduled runs, agents);
- ``/runs`` and ``/runs/<id>``: flow runs; a run's header, schematic, timeline, tasks
  (filters ``state`` and ``name``; ``task`` for one task's runs, paged with
  ``offset``), failures, logs (``level``, ``q``), actions (cancel, resume, approve);
  ``/runs/<id>/live`` is the small JSON the page polls;
- ``/runs/<id>/task-runs/<n>``: one task run with every attempt;
- ``/flows``, ``/flows/<id>`` (versions, schedule, recent runs, the run form) and
  ``/local-flows/<name>``;
- ``/agents``;
- for admins only (:mod:`ferroflow.server.ui.admin`): ``/tokens`` (make one, shown
  once; revoke), ``/secrets`` (names and dates; set, remove) and ``/audit`` (filters
  ``action`` and ``target``, paged with ``offset``).

``/signin`` (served by :func:`ferroflow.server.auth.signin_routes`) is drawn by
:meth:`UI.signin_page` in the same layout.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.routing import Mount

from ferroflow.server.database import Database
from ferroflow.server.ui.routes import UI, Problem

__all__ = ["UI", "Problem", "mount"]


def mount(get_db: Callable[[], Database], *, read_only: bool = False) -> Mount:
    """The UI's routes as one :class:`~starlette.routing.Mount` at ``/`` (put it last:
    it answers 404 for any path no earlier route took)."""
    return Mount("/", routes=UI(get_db, read_only=read_only).routes())
