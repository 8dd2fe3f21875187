"""Benchmarks: lorachat measured against the notebook's recipe, in one process, on one model.

`python -m bench [--quick] [--device cpu|cuda] [--json PATH]` (see bench/__main__.py). Knows how to
build models of a real checkpoint's shape with random weights; never downloads anything, never
imports prompt_toolkit or lorachat.repl (the GPU image has neither network nor prompt_toolkit).
"""
