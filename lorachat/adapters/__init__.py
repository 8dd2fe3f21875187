"""Adapters around the one base model: in memory (live: create, load, activate, scale, unload;
switching: exact fast switches; fast_load), on disk (paths, disk: save, delete, rename; provenance:
does a folder fit this base), and what is done with several (merging, export: a folder or GGUF with
its Modelfile, side_by_side: :compare and :eval); travel: what leaves lorachat without the gate.

One of the two packages that call PEFT (with training/). Imports core/, models/ and scoring/; never
lessons/, training/, serving/ or chat/, and knows nothing about terminals.
"""
