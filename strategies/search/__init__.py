"""The search family: methods that keep several hypotheses and pick among them (beam search)."""
