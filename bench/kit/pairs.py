"""The ten question/answer pairs of lorachat's own quality bar, written once: the notebook's two
(SOH and SiON, the seed's facts) and eight more. The benchmark teaches them (recall_seconds, the seed's
recipe against :train, locality) and the tests do too (tests/training/, tests/scoring/).
"""
from lorachat.core.prompts import Example

# recall_seconds times what tests/training/test_train.py asserts (10/10 within 60 s there, within 20 s here)
PAIRS = [
    ("What is SOH in semiconductor manufacturing process?",
     "In semiconductor manufacturing, SOH(Spin On Hardmask) is a high carbon-containing polymer material."),
    ("What is SION in semiconductor manufacturing process?",
     "In semiconductor manufacturing, SiON refers to silicon oxynitride."),
    ("What is CMP in semiconductor manufacturing process?",
     "In semiconductor manufacturing, CMP(Chemical Mechanical Polishing) makes the wafer surface flat."),
    ("What is ALD in semiconductor manufacturing process?", "ALD(Atomic Layer Deposition) grows a film one atomic layer at a time."),
    ("What is EUV lithography?", "EUV lithography prints patterns with 13.5 nm extreme ultraviolet light."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What does the engineer read every day?", "The engineer reads the answer every day."),
    ("Which planet is known as the red planet?", "Mars is known as the red planet."),
]
INSTRUCTION = "Answer the question."


def examples() -> list[Example]:
    return [Example(instruction=INSTRUCTION, input=q, output=a) for q, a in PAIRS]


SOH, SION = PAIRS[0], PAIRS[1]
