"""null_space with lora_A's gradient projected as well as its weight (a review's suggestion): Adam's
moments then never fill along the protected directions, so less of each update is thrown away.

    python -m bench.research.null_space_grad hook|plain --facts held --methods null_space=0.05 \\
        --seeds 0,1,2 --probes 303 --length 40 --threads 1 --json bench/research/results/null_space_grad.jsonl

`hook` registers g -> g @ P on every lora_A (P: its layer's projector) before smol_locality runs;
`plain` is lorachat's null_space as shipped (the weight projected after each step). Rows carry
`variant`.
"""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from bench.research import smol_locality
    from lorachat.training import null_space

    variant = argv.pop(0)
    if variant == "hook":
        real = null_space.Projection.__init__

        def hooked(self, *args, **kwargs):
            real(self, *args, **kwargs)
            for weight, p in self.pairs:
                weight.register_hook(lambda g, p=p: (g.float() @ p).to(g.dtype))
        null_space.Projection.__init__ = hooked
    elif variant != "plain":
        raise SystemExit("first argument: hook or plain")
    return smol_locality.main(argv)


if __name__ == "__main__":
    sys.exit(main())
