"""Inference-time scaling: many sequences at once (lanes), scored by rewards, selected by a method."""
