"""Container health check of a worker: `python3 -m worker.health` exits 0 when a
worker on this host has sent a heartbeat to Redis within the last few seconds."""

import socket
import sys

from app.settings import get_settings
from app.store import Store

settings = get_settings()
alive = Store(settings).workers_alive(3 * settings.worker_heartbeat_seconds + 1)
sys.exit(0 if any(socket.gethostname() in w for w in alive) else 1)
