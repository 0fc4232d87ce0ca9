"""The ASGI app, `uvicorn app.main:app` (built by app/api/factory.py)."""

from .api.factory import create_app

app = create_app()
