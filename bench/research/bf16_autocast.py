"""python -m bench.research.bf16_autocast [STEPS]: one training step on smol in fp32 and under CPU
bf16 autocast, timed.

smol (from $LORACHAT_CACHE) with PEFT LoRA r=4 on q,k,v, a batch of 4 x 64 random tokens, forward,
backward and an AdamW step; each precision warmed up once, then STEPS steps (default 5) timed, twice
over in turn. Says whether this CPU has bf16 matrix units (oneDNN's check). Measures only: `:train`
trains in the base's dtype (bench/RESULTS.md, "Profile of one `:train` on smol").
"""
import sys
import time


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    steps = int(argv[0]) if argv else 5
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bench.suites.smol import smol_folder

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(smol_folder()), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj"]))
    ids = torch.randint(0, model.config.vocab_size, (4, 64))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    print(f"bf16 matrix units (oneDNN): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for bf16 in (False, True, False, True):
        step(bf16)
        began = time.perf_counter()
        for _ in range(steps):
            step(bf16)
        print(f"{'bf16 autocast' if bf16 else 'fp32':14s} {(time.perf_counter() - began) / steps:.3f} s a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
