"""The web dashboard the controller serves beside its API: every deployment, live, with the
judge's evidence and the buttons to act. Server-rendered Jinja2 pages, a little JavaScript, and
uPlot (vendored in `static/`, see `static/VENDORED.md`) for the timeline chart.

`mount(app, controller, token)` adds it to the controller's FastAPI app (see `routes.py` for its
paths and `auth.py` for the session cookie and CSRF tokens)."""

from safeship.api.dashboard.routes import Dashboard, mount

__all__ = ["Dashboard", "mount"]
