"""Container health check of a worker: `python3 -m worker.health` exits 0 when a
worker on this host has sent a heartbeat to Redis within the last few seconds."""

import socket
import sys

from app.core.config import get_settings
from app.core.jobs import heartbeats
from app.core.store import connect

settings = get_settings()
alive = heartbeats.alive(connect(settings.redis_url, settings), settings.heartbeat_window)
sys.exit(0 if any(socket.gethostname() in w for w in alive) else 1)
