"""A small checkable task set, written for this project: arithmetic word problems with one numeric answer.

The bench (`python -m playground bench --scaling`) reports how often greedy and the scaling methods get
them right, with the checker reward (strategies/scaling/rewards.py) as the programmatic verifier.
"""

from __future__ import annotations

# (question, answer). Small numbers and one or two operations: a 135M model gets some right, not all.
ARITHMETIC = [
    ("Tom has 3 apples and buys 5 more. How many apples does he have now?", "8"),
    ("A box holds 6 eggs. How many eggs are in 4 boxes?", "24"),
    ("Sara had 20 stickers and gave 7 to her friend. How many stickers does she have left?", "13"),
    ("There are 9 birds on a tree and 4 more arrive. How many birds are on the tree?", "13"),
    ("A pencil costs 2 dollars. How much do 5 pencils cost, in dollars?", "10"),
    ("Ben reads 10 pages a day. How many pages does he read in 3 days?", "30"),
    ("A class has 12 girls and 15 boys. How many children are in the class?", "27"),
    ("Anna has 18 sweets and shares them equally among 3 friends. How many sweets does each friend get?", "6"),
    ("A train has 8 cars with 10 seats each. How many seats are on the train?", "80"),
    ("Max had 50 coins and spent 15. How many coins does he have left?", "35"),
    ("A garden has 4 rows of 7 flowers. How many flowers are in the garden?", "28"),
    ("Lucy is 9 years old. Her brother is 4 years older. How old is her brother?", "13"),
]

INSTRUCTION = " Think step by step, then give the final answer as a number."


def prompt(question: str) -> str:
    return question + INSTRUCTION
