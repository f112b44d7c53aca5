"""The speculative family: draft, verify in one target pass, keep what the target agrees with.

Shared machinery (each method file says only how it drafts and how it judges):
- tree.py: the draft tree, tree attention (one pass over every node) and KV-cache bookkeeping;
- drafters.py: the draft model's cache protocol, chain drafting, best-first tree growth;
- acceptance.py: acceptance rules as pure functions on probability vectors;
- verify.py: verifiers (greedy, speculative sampling on a chain, recursive rejection on a tree);
- rounds.py: one round as events, acceptance statistics, the "plain steps" notice;
- loop.py: the one round loop;
- cost_model.py: what a verification pass costs on this machine (adaptive draft sizes).
"""
