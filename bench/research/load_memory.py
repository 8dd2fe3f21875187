"""python -m bench.research.load_memory DIR DTYPE: what loading a checkpoint holds in memory, by kind.

Loads DIR with lorachat's loader (models/loader.py `load_model`, on the CPU, in DTYPE) while a thread
reads /proc/self/status every 10 ms, and prints one JSON line: the load's seconds, the peak VmRSS
(VmHWM, what bench/suites/opt27.py reports), and apart the peaks of RssAnon (memory the process
allocated: the weights it made) and RssFile (pages of the mapped checkpoint it read: page cache the
kernel can drop under pressure), then the same after loading. Measures only; Linux only.
Used for OPT-2.7B's shape (bench/suites/opt27.py's checkpoint in $LORACHAT_CACHE/bench-opt27):
`python -m bench.research.load_memory $LORACHAT_CACHE/bench-opt27 float32`.
"""
import json
import sys
import threading
import time

GB = 1e9
KINDS = ("VmRSS", "RssAnon", "RssFile")


def status(*names: str) -> dict:
    with open("/proc/self/status", encoding="utf-8") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.startswith(names)}


def main(argv=None) -> int:
    from lorachat.models.loader import load_model

    folder, dtype = (sys.argv[1:] if argv is None else argv)[:2]
    peaks = dict.fromkeys(KINDS, 0)
    done = threading.Event()

    def watch():
        while not done.wait(0.01):
            for kind, value in status(*KINDS).items():
                peaks[kind] = max(peaks[kind], value)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    loaded = load_model(folder, device="cpu", dtype=dtype)   # held until the figures after are read
    seconds = time.perf_counter() - start
    time.sleep(0.05)
    done.set()
    watcher.join()
    after = status(*KINDS)
    del loaded
    print(json.dumps({"dtype": dtype, "load_s": round(seconds, 1), "VmHWM_gb": round(status("VmHWM")["VmHWM"] / GB, 2),
                      **{f"peak_{k}_gb": round(v / GB, 2) for k, v in peaks.items()},
                      **{f"after_{k}_gb": round(v / GB, 2) for k, v in after.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
