"""The ground floor: what every other package may use and nothing here may outgrow.

Owns the user-facing error (errors), the prompt rule (prompts: one rendering of a question for
asking, training, recall and serving), workspace names (names), durable writes (durable: appends,
file replaces, atomic folders), launch facts (launch: which process of how many), the cache folder
(cache) and the hub reachability check (hub). Imports nothing from lorachat outside core/, and no
heavy library at import time.
"""
