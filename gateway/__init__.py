"""ticketgate: an authenticated real-time gateway (aiohttp + python-socketio + Redis)."""

__version__ = "0.1.0"
