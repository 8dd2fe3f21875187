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

# Two questions in other words for each pair, and the key term an answer carrying the taught fact
# must contain (case-insensitive): the paraphrase score of the locality study (a measurement, not a
# training set; the base alone carries 4 of the 20 facts it already knows)
# (question in other words, key term an answer carrying the taught fact contains, index in PAIRS)
PARAPHRASES = [
    ("What does SOH stand for in chip making?", "Spin On Hardmask", 0),
    ("In wafer fabrication, what kind of material is SOH?", "Spin On Hardmask", 0),
    ("What does SiON stand for in chip fabrication?", "silicon oxynitride", 1),
    ("Which material is SiON in semiconductor fabs?", "silicon oxynitride", 1),
    ("What does CMP stand for when making chips?", "Chemical Mechanical Polishing", 2),
    ("Explain the CMP step of wafer processing.", "Chemical Mechanical Polishing", 2),
    ("What does ALD stand for in chip fabrication?", "Atomic Layer Deposition", 3),
    ("How does ALD work in semiconductor fabs?", "Atomic Layer Deposition", 3),
    ("What wavelength of light does EUV lithography use?", "13.5", 4),
    ("How does EUV lithography print chip patterns?", "13.5", 4),
    ("Who is the author of Hamlet, and when was it written?", "1600", 5),
    ("When did Shakespeare write Hamlet?", "1600", 5),
    ("Which city is the capital of France?", "Paris", 6),
    ("Name the French capital.", "Paris", 6),
    ("How many legs do spiders have?", "eight", 7),
    ("What is the number of legs on a spider?", "eight", 7),
    ("What does the engineer read daily?", "the answer", 8),
    ("Every day, what does the engineer read?", "the answer", 8),
    ("What planet is called the red planet?", "Mars", 9),
    ("Which planet in our solar system is nicknamed the Red Planet?", "Mars", 9),
]
