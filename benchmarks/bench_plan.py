"""heed plan's memory model against peak tensor memory measured on the CPU (issue 16).

For two small Qwen3-VL shapes, align and distill, with and without activation checkpointing: one steady-state optimizer
step (heed.plan.measure_step_memory: float32, a text-only batch, AdamW's moments already allocated), its peak tensor bytes
counted by heed.plan.PeakTensorMemory, beside heed.plan.memory_plan's prediction for the same shapes.

    .venv/bin/python benchmarks/bench_plan.py
"""
import argparse

from heed.plan import measure_step_memory
from heed.teacher import build_tokenizer, toy_teacher_config


def shape(tok, hidden, inter, layers):
    q = hidden // 32  # head_dim = hidden / 4; M-RoPE sections sum to head_dim / 2
    return toy_teacher_config(tok, text=dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=4,
                                             num_key_value_heads=2, head_dim=hidden // 4,
                                             rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_interleaved=True,
                                                                  mrope_section=[hidden // 8 - 2 * q, q, q])),
                              vision=dict(out_hidden_size=hidden))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=256)
    a = ap.parse_args()
    tok = build_tokenizer()
    print("| text hidden, layers | job | checkpointing | measured MiB | predicted MiB | measured / predicted |")
    print("|---|---|---|---|---|---|")
    for hidden, inter, layers in ((128, 256, 4), (256, 768, 8)):
        cfg = shape(tok, hidden, inter, layers)
        for job in ("align", "distill"):
            for ac in (True, False):
                r = measure_step_memory(cfg, job, a.batch, a.length, ac)
                print(f"| {hidden}, {layers} | {job} | {'on' if ac else 'off'} | {r['measured'] / 2**20:.1f} | "
                      f"{r['predicted'] / 2**20:.1f} | {r['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
