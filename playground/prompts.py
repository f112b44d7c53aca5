"""Example prompts: the bench's two sets, also offered as examples in the UI."""

# Two kinds of work: open-ended answers (nothing to copy: drafts must predict the model), and
# grounded edits of a given text, where the answer repeats the input (the case prompt lookup
# and retrieval drafts were made for). The bench gives each set its own table and generate baseline.
PROMPT_SETS = {
    "open-ended": [
        "What is the capital of France?",
        "Write a short story about a robot who learns to paint.",
        "Explain in three sentences why the sky is blue.",
        "List five fruits and one fact about each.",
    ],
    "grounded": [
        "Correct the spelling in this paragraph and write it out in full:\n\nThe old lighthouse stood on the edge "
        "of the cliff for more then a hundred years. Every night its lamp turnd slowly, sending a beam of light "
        "acros the dark water so that ships could find there way home.",
        "Add a docstring to each function and return the whole code:\n\n```python\ndef area(width, height):\n"
        "    return width * height\n\n\ndef perimeter(width, height):\n    return 2 * (width + height)\n\n\n"
        "def is_square(width, height):\n    return width == height\n```",
        "Rewrite this text in the past tense:\n\nMaria walks to the market every morning. She buys fresh bread "
        "and a bag of oranges. On the way home she stops at the park, sits on a bench and watches the ducks on "
        "the pond.",
        "Convert this list to a numbered list:\n\n- apples\n- bananas\n- cherries\n- dates\n- elderberries\n"
        "- figs\n- grapes",
    ],
}
