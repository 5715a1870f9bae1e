"""Cluster state for ``supervisor status`` and the dashboard: :func:`gather` reads the
records of a cluster into one plain document (:mod:`.read`, shape in its docstring);
:func:`render_text` and :func:`render_json` show it (:mod:`.render`).
"""

from .read import gather
from .render import render_json, render_text

__all__ = ["gather", "render_json", "render_text"]
