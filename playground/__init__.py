"""Decoding Playground: watch language-model decoding methods work, token by token."""

__version__ = "0.1.0"
