"""Entry point for `python app.py` and Hugging Face Spaces (both SDKs run this file): the database is
checked, the model warmed up, then the app served (playground/server.py)."""

from playground.server import launch
from playground.ui import build_app

demo = build_app()

if __name__ == "__main__":
    launch(demo)
