"""Beam search, streamed step by step with its live tree.

Same rules as transformers' `generate(num_beams=...)` (v5), so the two agree token for token:
each step keeps the top 2W continuations of the W beams; those ending in EOS (or at the length
limit) among the top W become finished hypotheses scored by logprob / length**length_penalty;
the best W unfinished continue. Search stops when no running beam can beat the worst finished
one (the `early_stopping` heuristic) or at max_new_tokens.

The beams are lanes (playground/lanes.py): each step selects the parent rows of the W continuations
(forking a beam that keeps two children, dropping one that keeps none), then pushes one token per row in
ONE batched forward. Pushing describes each kept token; those descriptions are the answer's.

Beam search commits its tokens only at the end. Stopped mid-run (StopRun), it commits the best
hypothesis so far: a finished one, or the best running beam if it scores higher as it stands.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from playground.events import NoticeEvent, StatsEvent, TreeEvent, TreeNode
from playground.lanes import Lanes

from ..base import Param, StopRun, Strategy

NEG = -1.0e9


class BeamSearch(Strategy):
    name = "beam"
    title = "Beam search"
    summary = "Keep the W best partial sequences by total log-probability; the tree grows live."
    paper = "https://huggingface.co/docs/transformers/generation_strategies#beam-search"
    row_params = ("num_beams",)   # memory bound: Strategy.footprint
    params = (
        Param("num_beams", "int", 3, 1, 16, help="Beam width W.", step=1),
        Param("length_penalty", "float", 1.0, -2.0, 4.0,
              help="Finished score = logprob / length**penalty; > 0 favours longer outputs.", step=0.1),
        Param("early_stopping", "choice", "heuristic", choices=("heuristic", "true", "never"),
              help="heuristic: stop when no beam can still win (transformers' default); "
                   "true: stop at W finished; never: run to the length limit when the penalty is positive."),
    )

    def decode(self, s):
        width, lp, stopping = self.p["num_beams"], self.p["length_penalty"], self.p["early_stopping"]
        lanes = Lanes(s, width)                                              # one prompt pass, W rows
        logits = lanes.logits                                                # (W, V): all rows the root
        vocab = logits.shape[-1]
        keep_k = max(2, 1 + len(s.eos_ids)) * width
        running = torch.full((width,), NEG)
        running[0] = 0.0                                                     # only beam 0 is real at first
        seqs: list[list[int]] = [[] for _ in range(width)]
        leaf: list[int | None] = [None] * width                              # tree node of each beam's last token
        finished: list[tuple[float, list[int], int]] = []                    # (normalised score, tokens, node)
        described: dict[int, object] = {}                                    # node -> TokenEvent (for the answer)
        parent_of: dict[int, int | None] = {}
        next_node = 0
        can_improve = True
        eos = torch.tensor(sorted(s.eos_ids), dtype=torch.long)

        for step in range(s.max_new_tokens):
            length = step + 1
            logp = torch.log_softmax(logits.float(), -1)                     # transformers scores beams in fp32
            top_scores, top_idx = torch.topk((logp + running[:, None]).view(-1), keep_k)
            parent_beam, token = top_idx // vocab, top_idx % vocab
            hits = torch.isin(token, eos) | (length >= s.max_new_tokens)

            # Finished hypotheses: only those ranked within the top W may enter.
            full = len(finished) == width
            candidates = []
            if can_improve and not (stopping == "true" and full):
                for r in range(width):
                    if hits[r]:
                        candidates.append((float(top_scores[r]) / (length ** lp), r))
            # Next running beams: the best W continuations that did not finish.
            order = torch.topk(top_scores - hits.float() * 1e9, width).indices

            nodes, node_of_rank = [], {}
            for r in range(keep_k):
                b, t = int(parent_beam[r]), int(token[r])
                if float(top_scores[r]) <= NEG / 2:
                    continue
                node_of_rank[r] = next_node
                parent_of[next_node] = leaf[b]
                nodes.append(TreeNode(id=next_node, parent=leaf[b], token_id=t, text=s.token_text(t),
                                      score=float(top_scores[r]), logprob=float(logp[b, t]), status="pruned"))
                next_node += 1
            by_id = {n.id: n for n in nodes}
            for r in order.tolist():
                by_id[node_of_rank[r]].status = "kept"
            for score, r in candidates:
                node = by_id[node_of_rank[r]]
                node.status, node.label = "finished", f"{score:.3f}"
                b = int(parent_beam[r])
                described[node.id] = s.describe(node.token_id, logits[b], 0)
                finished.append((score, seqs[b] + [node.token_id], node.id))
            finished = sorted(finished, key=lambda f: -f[0])[:width]

            rows = parent_beam[order].tolist()
            new_seqs = [seqs[b] + [int(token[r])] for b, r in zip(rows, order.tolist())]
            new_leaf = [node_of_rank[r] for r in order.tolist()]
            # Preview: the best running beam, unless a finished hypothesis already scores higher.
            running_best = float(top_scores[order[0]]) / length ** lp
            preview = finished[0][1] if finished and finished[0][0] >= running_best else new_seqs[0]
            running = top_scores[order].clone()                              # best first (topk order)
            seqs, leaf = new_seqs, new_leaf

            # Can a running beam still beat the worst finished one? (transformers' heuristic)
            best_len = s.max_new_tokens if (stopping == "never" and lp > 0) else length
            if len(finished) == width:
                can_improve = can_improve and float(running[0]) / (best_len ** lp) > finished[-1][0]
            done = (not can_improve or (stopping == "true" and len(finished) == width) or bool(hits.all())
                    or step + 1 >= s.max_new_tokens)
            if done:                                                         # no further pass: describe here
                for b, r in zip(rows, order.tolist()):
                    described[node_of_rank[r]] = s.describe(int(token[r]), logits[b], 0)
            else:                                                            # fork/drop rows, then one pass
                lanes.select(rows)
                lanes.push([seq[-1] for seq in seqs], step)
                for node_id, lane in zip(leaf, lanes.lanes):
                    described[node_id] = lane.described[-1]
                logits = lanes.logits
            try:                                                             # state is whole here: a Stop
                yield TreeEvent(step=step, nodes=nodes, reset=step == 0, title="Beam tree",   # may land
                                preview=s.tokenizer.decode(preview, skip_special_tokens=False))
                yield StatsEvent({"finished hypotheses": len(finished), "beam width": width})
            except StopRun:
                best_running = (float(running[0]) / length ** lp, seqs[0], leaf[0])
                yield from self.answer(s, finished + [best_running], parent_of, described, stopped=True)
                return
            if done:
                break

        yield from self.answer(s, finished, parent_of, described)

    @staticmethod
    def answer(s, hypotheses: list[tuple[float, list[int], int]], parent_of: dict, described: dict,
               stopped: bool = False):
        """Commit the best-scoring hypothesis (score, tokens, leaf node), walked back up the tree. When
        stopped, the candidates include the best running beam, scored as if it ended there."""
        score, _, node_id = max(hypotheses, key=lambda h: h[0])
        if stopped:
            kind = "finished" if any(h[2] == node_id for h in hypotheses[:-1]) else "running (unfinished)"
            yield NoticeEvent("beam", f"Stopped: the output is the best {kind} hypothesis so far "
                                      f"(score {score:.3f}).")
        yield TreeEvent(step=s.max_new_tokens, nodes=[], reset=False, title="Beam tree", chosen=node_id)
        path = []
        while node_id is not None:
            path.append(node_id)
            node_id = parent_of[node_id]
        for node_id in reversed(path):
            yield s.emit(replace(described[node_id]))     # a copy: the lanes keep theirs
