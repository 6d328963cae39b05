"""bosun's HTTP API (FastAPI): ``bosun.server.app.create_app(settings, store)``."""
