"""docs/scale-out.md's numbers are what jobs/scale_plan.py computes (change one, change both)."""

from __future__ import annotations

from pathlib import Path

from jobs import scale_plan as plan

DOC = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()


def test_doc_tables_match_the_arithmetic() -> None:
    gptj, llama = plan.SHAPES["GPT-J-6B"], plan.SHAPES["Llama-3-8B"]
    assert round(plan.cpu_rate() / 1e9) == 80 and "**80 GFLOP/s**" in DOC
    for shape, flops in ((gptj, "7.00"), (llama, "6.28")):
        assert f"{shape.stats_flops_per_token(shape.max_length / 2) / 1e9:.2f}" == flops
        assert f"**{flops} GFLOP/token**" in DOC
        total = sum(plan.editor_memory(shape).values()) / plan.GB
        assert f"**{total:.1f} GB**" in DOC
        for n in (1, 2, 4, 8, 16):
            wall = plan.stats_hours(shape, 100_000 * shape.max_length, n)["wall_h"]
            assert f"{wall:.2f} h" in DOC, (shape.name, n, wall)
        assert f"**{plan.cell_hours(shape)['editor_h']:.3f} h**" in DOC
    assert "1,412 = 2 models x 2 methods x 353 seeds" in DOC and "176 = 2 x 2 x 44 seeds" in DOC
    assert "-> 1412 cells" in plan.overnight() and "today) 176 cells" in plan.overnight()


def test_sizes_from_shapes() -> None:
    llama = plan.SHAPES["Llama-3-8B"]
    assert llama.d_k**2 * 4 == 822_083_584  # one fp32 projector: the reference note's 822 MB
    assert plan.nonembed(llama) == llama.params - 2 * 128256 * 4096  # untied embedding and LM head
    assert plan.traffic(llama)["checkpoints per cell (checkpoint_every=1)"] == 20 * plan.traffic(llama)["checkpoint (each)"]
