"""`python -m tests.training.skewed_clock ARGS`: `python -m lorachat ARGS`, where on rank 1 every
recall check seems to take 1000 s (its clock jumps while the trainer's `_check` reads it).

A rank's own clock must not decide anything the ranks do together: if rank 1 alone judged its
checks too dear to run again, rank 0 would check alone and the two would part ways in their
collectives and wait for each other for ever. test_ranks runs a two-rank training under this.
"""
import os
import runpy
import sys
import time

if os.environ.get("RANK") == "1":
    _real, _jumps = time.perf_counter, [0]

    def _skewed() -> float:
        if sys._getframe(1).f_code.co_name == "_check":
            _jumps[0] += 1
        return _real() + 1000.0 * _jumps[0]

    time.perf_counter = _skewed

runpy.run_module("lorachat", run_name="__main__", alter_sys=True)
