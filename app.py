"""Entry point for `python app.py` and Hugging Face Spaces (which imports this file and serves `demo`)."""

from playground.ui import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo)
