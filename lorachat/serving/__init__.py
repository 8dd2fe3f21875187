"""Serving saved adapters with vLLM: the command line and its plan (server), what vLLM would refuse,
read from the files alone (preflight), and lorachat's prompt as a Jinja chat template (chat_template).

Reads files only (adapter folders, the base's tokenizer and config). Imports core/, models/ and
adapters/ (provenance); never training/ or chat/.
"""
