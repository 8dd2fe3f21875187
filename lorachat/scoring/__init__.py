"""What a model makes of examples, measured without generating where it can: padded batches and
answer-only loss (batches), recall as asked (recall), and locality, how much of the base's answers
an adapter keeps (locality, the model-level half).

Runs forward passes on whatever model it is given; imports only core/ and models/, never adapters/,
training/, sessions or terminals.
"""
