"""The HTTP face: ``uvicorn service.server.app:create_app --factory``."""
