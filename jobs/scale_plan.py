"""The scale-out plan's arithmetic (docs/scale-out.md): sizes from model shapes, times from measured
single-node figures scaled by FLOPs, and one stated assumption (the GPU's sustained FLOP rate).

    python -m jobs.scale_plan            # prints every table of docs/scale-out.md

Nothing here is measured on a GPU: MEASURED holds the single-node figures (SmolLM2-135M on the
2-core CPU; the Ray and writer figures from this repository's machine), everything else is
arithmetic from the shapes in SHAPES. Change GPU_TFLOPS to your cluster's measured rate.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from eval.cli import add_log_level, cli_edge

GB = 1e9


@dataclass(frozen=True)
class Shape:
    name: str
    params: float  # total parameters
    n_layer: int
    d_model: int
    d_k: int  # MLP width (the keys' dimension)
    vocab: int
    kv_dim: int  # width of K and V projections (GQA: n_kv_heads x head_dim)
    layers: tuple[int, ...]  # edited layers (the presets)
    # Statistics tokens per document the plan assumes (an upper bound: every article that long). Llama-3:
    # 4096, the 2026 refactor's cap; its preset now follows the reference (the 8192 context), which
    # at most doubles the statistics' token count and time of this plan.
    max_length: int
    gated: bool  # SwiGLU MLP (3 matrices) or GELU (2)
    tied: bool  # embedding tied to the LM head

    def block_params(self) -> float:
        attn = 2 * self.d_model * self.d_model + 2 * self.d_model * self.kv_dim
        mlp = (3 if self.gated else 2) * self.d_model * self.d_k
        return attn + mlp

    def lm_head(self) -> float:
        return self.vocab * self.d_model

    def stats_flops_per_token(self, context: float) -> float:
        """Forward to the last edited layer (2 x params) + attention (4 x context x d per layer) + the
        Σ k kᵀ accumulation (2 d_k² per edited layer)."""
        blocks = max(self.layers) + 1
        return blocks * (2 * self.block_params() + 4 * context * self.d_model) + 2 * self.d_k**2 * len(self.layers)


SHAPES = {
    # HF configs: EleutherAI/gpt-j-6b, meta-llama/Meta-Llama-3-8B-Instruct; presets in alphaedit/hparams.py
    "GPT-J-6B": Shape("GPT-J-6B", 6.05e9, 28, 4096, 16384, 50400, 4096, (3, 4, 5, 6, 7, 8), 2048, False, False),
    "Llama-3-8B": Shape("Llama-3-8B", 8.03e9, 32, 4096, 14336, 128256, 1024, (4, 5, 6, 7, 8), 4096, True, False),
    "SmolLM2-135M": Shape("SmolLM2-135M", 134.5e6, 30, 576, 1536, 49152, 192, (2, 3, 4, 5, 6), 512, True, True),
}

MEASURED = {  # SmolLM2-135M on the 2-core CPU (README, issue 21); Ray/writer on this machine
    "stats_s": 109.0, "stats_tokens": 116_363, "stats_context": 118.0,  # 984 docs -> mean 118 tokens
    "targets_s_per_edit": 0.506, "targets_steps": 12,
    "keys_s_per_100": 46.0,
    "eval_s_per_100_records": 13.9,
    "probes_s_per_point": 33.0,  # README demo: 66 s for 2 evaluation points
    "writer_ms_per_write": 6.4,  # one ResultWriter.write() transaction of 40 rows (DuckDB, in-process)
    "ray_local_transfer_MBps": 492.0,  # 256 MiB between two raylets on this machine (loopback)
    "cpu_bf16_over_fp32": 7.4,  # torch matmul 2048³ on this CPU, 2 threads: 208 vs 28 GFLOP/s (AMX)
}
TARGET_STEPS = {"GPT-J-6B": 25, "Llama-3-8B": 25}  # v_num_grad_steps of the presets
GPU_TFLOPS = 200.0  # ASSUMPTION: sustained dense bf16/tf32 rate of one GPU (an H100 at ~20% of its 989 peak)
NETWORK_GBps = 3.1  # ASSUMPTION: 25 Gbit/s between nodes
SHARED_FS_GBps = 1.0  # ASSUMPTION: write rate of the artifact store's shared file system per client


def cpu_rate() -> float:
    """FLOP/s the measured statistics run reached on the CPU (the one calibration of the FLOP scaling)."""
    s = SHAPES["SmolLM2-135M"]
    return MEASURED["stats_tokens"] * s.stats_flops_per_token(MEASURED["stats_context"]) / MEASURED["stats_s"]


def nonembed(s: Shape) -> float:
    return s.params - s.vocab * s.d_model * (1 if s.tied else 2)


def editor_memory(s: Shape) -> dict[str, float]:
    """GPU bytes of one editor actor (fp32 weights, as the sweep loads them)."""
    n = len(s.layers)
    w = s.d_k * s.d_model * 4  # one edited weight, fp32
    return {
        "model fp32": s.params * 4,
        "projectors P (fp32)": n * s.d_k**2 * 4,
        "Σ Kp Kpᵀ (fp32)": n * s.d_k**2 * 4,
        "base snapshot + Δ of edited weights": 2 * n * w,
        "solve workspace (3 d_k² fp64, one layer)": 3 * s.d_k**2 * 8,
    }


def stats_hours(s: Shape, tokens: float, shards: int) -> dict[str, float]:
    compute = tokens * s.stats_flops_per_token(s.max_length / 2) / (GPU_TFLOPS * 1e12)
    shard_bytes = len(s.layers) * s.d_k**2 * 8  # per-layer Σ k kᵀ float64
    load = s.params * 2 / SHARED_FS_GBps / GB  # bf16 weights read once per shard task
    merge = shards * shard_bytes / (NETWORK_GBps * GB)  # every shard's partial to the one merge task
    return {"compute_h": compute / 3600, "per_shard_h": (compute / shards + load) / 3600,
            "merge_s": merge, "wall_h": (compute / shards + load + merge) / 3600, "shard_GB": shard_bytes / GB}


def cell_hours(s: Shape, n_edits: int = 2000, batch: int = 100, eval_every: int = 500) -> dict[str, float]:
    """One cell on one GPU: targets + keys + solve per batch (FLOP-scaled from the CPU figures) and
    its evaluations (records scored at each point: all edited so far; the unedited point scores all)."""
    small = SHAPES["SmolLM2-135M"]
    speed = GPU_TFLOPS * 1e12 / cpu_rate()  # GPU over the measured CPU
    per_edit_flops = (nonembed(s) + s.lm_head()) / (nonembed(small) + small.lm_head())
    # targets ran in bf16 on the CPU (AMX): their CPU FLOP rate is cpu_bf16_over_fp32 x the fp32 calibration
    targets = n_edits * MEASURED["targets_s_per_edit"] * per_edit_flops * TARGET_STEPS[s.name] / MEASURED[
        "targets_steps"] / speed * MEASURED["cpu_bf16_over_fp32"]
    key_ratio = (max(s.layers) + 1) * s.block_params() / ((max(small.layers) + 1) * small.block_params())
    keys = n_edits / 100 * MEASURED["keys_s_per_100"] * key_ratio / speed
    solve = n_edits / batch * len(s.layers) * 4 * s.d_k**3 / (GPU_TFLOPS / 4 * 1e12)  # fp64 at 1/4 the rate
    points = sorted(set(range(0, n_edits, eval_every)) | {n_edits})
    records = sum(p if p else n_edits for p in points)
    evals = records / 100 * MEASURED["eval_s_per_100_records"] * per_edit_flops / speed
    probes = len(points) * MEASURED["probes_s_per_point"] * per_edit_flops / speed
    return {"targets_h": targets / 3600, "keys_h": keys / 3600, "solve_h": solve / 3600,
            "eval_h": evals / 3600, "probes_h": probes / 3600,
            "editor_h": (targets + keys + solve) / 3600, "eval_points": len(points), "records": records}


def traffic(s: Shape, n_edits: int = 2000, batch: int = 100, eval_every: int = 500) -> dict[str, float]:
    """Bytes per cell: object store (editor start, evaluations) and artifact store (checkpoints)."""
    n = len(s.layers)
    w = n * s.d_k * s.d_model * 4
    evals = len(set(range(eval_every, n_edits, eval_every)) | {n_edits})
    ckpt = w + n * s.d_k**2 * 4 + w  # Δ + Σ Kp Kpᵀ + exact edited weights
    return {"editor start: stats + P (float64)": 2 * n * s.d_k**2 * 8 / GB,
            "deltas to evaluations": evals * w / GB,
            "checkpoint (each)": ckpt / GB,
            "checkpoints per cell (checkpoint_every=1)": math.ceil(n_edits / batch) * ckpt / GB}


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.scale_plan", description=__doc__.splitlines()[0])
    add_log_level(p, "warning")
    p.parse_args(argv)
    print(f"CPU calibration: {cpu_rate() / 1e9:.1f} GFLOP/s sustained (SmolLM2 statistics, measured)")
    print(f"assumed GPU: {GPU_TFLOPS:.0f} TFLOP/s sustained; network {NETWORK_GBps} GB/s; shared FS {SHARED_FS_GBps} GB/s\n")
    for name in ("GPT-J-6B", "Llama-3-8B"):
        s = SHAPES[name]
        tokens = 100_000 * s.max_length  # upper bound: 100k articles, each truncated at max_length
        print(f"## {name}: {s.stats_flops_per_token(s.max_length / 2) / 1e9:.2f} GFLOP/token of statistics; "
              f"upper bound {tokens / 1e6:.0f} M tokens")
        for n in (1, 2, 4, 8, 16):
            st = stats_hours(s, tokens, n)
            print(f"  stats N={n:2d}: wall {st['wall_h']:.2f} h (compute {st['compute_h']:.2f} GPU-h, merge "
                  f"{st['merge_s']:.0f} s, {st['shard_GB']:.1f} GB per shard partial)")
        mem = editor_memory(s)
        print("  editor memory: " + ", ".join(f"{k} {v / GB:.1f} GB" for k, v in mem.items())
              + f"; total {sum(mem.values()) / GB:.1f} GB")
        c = cell_hours(s)
        print("  cell (2,000 edits, batches of 100, eval every 500): " + ", ".join(
            f"{k} {v:.3f}" if k.endswith("_h") else f"{k} {v}" for k, v in c.items()))
        print("  traffic per cell: " + ", ".join(f"{k} {v:.1f} GB" for k, v in traffic(s).items()))
        print()
    print(overnight())
    return 0


def overnight(gpus: int = 16, hours: float = 10.0, methods: int = 2) -> str:
    """The largest models x methods x seeds grid (both models, 2,000-edit cells) that ``gpus`` finish in
    ``hours``: statistics first (sharded over every GPU), then one cell per GPU at a time, evaluations on
    the GPUs beside the editors (num_gpus 0.5 each)."""
    models = [SHAPES["GPT-J-6B"], SHAPES["Llama-3-8B"]]
    stats_gpu_h = sum(stats_hours(m, 100_000 * m.max_length, 1)["compute_h"] for m in models)
    cell_gpu_h = sum(cell_hours(m)["editor_h"] + cell_hours(m)["eval_h"] + cell_hours(m)["probes_h"]
                     for m in models) / len(models)
    left = gpus * hours - stats_gpu_h
    cells = int(left / cell_gpu_h)
    seeds = cells // (len(models) * methods)
    one_editor = int((hours - stats_gpu_h / gpus) / cell_gpu_h) * len(models)
    return (f"overnight ({hours:g} h, {gpus} GPUs): statistics {stats_gpu_h:.1f} GPU-h (upper bound), "
            f"{cell_gpu_h:.3f} GPU-h per cell -> {cells} cells = {len(models)} models x {methods} methods x "
            f"{seeds} seeds with {gpus} editors; with one editor per model (the sweep today) {one_editor} cells")


if __name__ == "__main__":
    raise SystemExit(main())
