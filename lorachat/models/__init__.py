"""Base models: loading one (a hub id, a local folder, the built-in `tiny`), and its identity; GGUF
files read (converted into folders) and written (llama.cpp's tensor names, metadata and the file).

Owns device and dtype choice, the built-in models, and fingerprints of a checkpoint's weights.
Imports only core/; knows nothing about adapters, prompts beyond tokenizers, sessions or terminals.
"""
