"""The sampling family: greedy (the reference), ancestral sampling with the warper chain, Top-H.

Shared machinery: warpers.py (every truncation rule and the one chain all sampling methods use)."""
