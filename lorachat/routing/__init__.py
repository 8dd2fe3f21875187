"""Who answers a question when an adapter is active: the ask-time gate's decision, read from the
base model alone. reading (the base's first layers' reading of a question's words: the shortlist),
lift (how much a question makes a taught answer likelier: the check), router (the two together:
keys, decisions).

Runs forward passes on whatever model it is given (the caller turns the adapters off); imports only
core/, models/ and scoring/, never adapters/, sessions or terminals.
"""
