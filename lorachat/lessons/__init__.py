"""Lessons: the examples a user teaches, on disk as `datasets/NAME.jsonl` (jsonl), and other
people's instruction data mapped to them (importers reads it through the `datasets` library, formats
maps its rows; this package is not named after it, so `import datasets` always means Hugging Face's).

Imports only core/; knows nothing about models, adapters, sessions or terminals.
"""
