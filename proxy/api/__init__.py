"""The HTTP control plane: endpoints and tokens over ``/v1``, health, readiness, metrics.

``app.py`` builds the app: its routes (``endpoint_routes.py``, ``token_routes.py``,
``operation_routes.py``) map onto ``pgwake.endpoint.control_plane.ControlPlane`` (which
decides who may do what), ``errors.py`` gives every error one JSON shape, ``models.py``
holds the bodies the OpenAPI document is made from, and ``http.py`` serves the app with
uvicorn on pgwake's own event loop.
"""

from __future__ import annotations

from pgwake.api.app import create_app
from pgwake.api.http import ApiServer, bind

__all__ = ["ApiServer", "bind", "create_app"]
