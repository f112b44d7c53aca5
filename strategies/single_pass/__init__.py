"""Single-pass methods: one sequence, one forward pass per token, a different choice rule (momentum, superposed, AdaDec, exact-extract)."""
