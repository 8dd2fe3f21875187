"""The conversation with a user: the Session (the one owner of mutable state), the REPL and its one
error boundary (repl), how output looks (ui), streamed answers (streaming), key=value words
(options) and the commands (commands/, one small function each; its docstring is its :help).

The top of the house below cli.py: may import every other package; nothing below imports it.
"""
