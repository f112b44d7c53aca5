"""Entry point for `python app.py` and Hugging Face Spaces (both SDKs run this file): the database is
checked first (seconds; a bad one stops here, before the UI is built and the model loaded), then the
model warmed up and the app served (playground/server.py)."""

from playground.server import launch, prepare_database

if __name__ == "__main__":
    prepare_database()

from playground.ui import build_app  # noqa: E402  (after the check: building the UI takes a while)

demo = build_app()

if __name__ == "__main__":
    launch(demo, database_ready=True)
