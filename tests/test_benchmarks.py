"""benchmarks/profile_step.py and benchmarks/train_step.py run and print what they claim (the figures
themselves are measurements: the README quotes them with the command that made them)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_step  # noqa: E402
import train_step  # noqa: E402


def test_profile_times_every_op_of_the_step_and_accounts_for_the_whole_step():
    times = profile_step.profile("tiny", 2)
    total = times[("step", "total")]
    ops = {op for phase, op in times if phase != "step"}
    assert {"matmul_forward", "matmul_backward", "classifier", "adamw", "norm_squared", "layernorm_forward",
            "attention_backward", "gelu_backward", "encoder_backward"} <= ops
    inside = sum(t for (phase, _), t in times.items() if phase != "step")
    assert 0 < inside <= total
    text = profile_step.table("tiny", times, markdown=True)
    assert "| forward | matmul_forward |" in text and "outside the ops" in text


def test_profile_refuses_unknown_sizes():
    with pytest.raises(SystemExit):
        profile_step.main(["--sizes", "huge"])


def test_train_step_runs_both_sides_and_prints_the_ratio_with_its_spread(capsys):
    results = train_step.main(["--sizes", "tiny", "--runs", "1", "--steps", "3"])
    out = capsys.readouterr().out
    assert "fp32 peak of this machine:" in out and "| tiny: L4 H4 C128 (12, 64) |" in out
    quiet = results["tiny"]["quiet"]
    assert quiet["ours"]["tokens_per_s"] > 0 and quiet["torch"]["tokens_per_s"] > 0
    lo, hi = quiet["speed"][1], quiet["speed"][2]
    assert lo <= quiet["speed"][0] <= hi
    for side in ("ours", "torch"):   # both really trained
        assert quiet[side]["last_loss"] < quiet[side]["first_loss"]


def test_step_flops_count_the_matmuls_and_attention():
    config, B, T = train_step.SIZES["124M"]
    # GPT-2 124M: 12 layers of 12 C^2 matmul weights and the 50304 x 768 classifier, 6 FLOPs per weight
    # and token; attention 12 L B T^2 C
    expected = 6 * 256 * (12 * 12 * 768 ** 2 + 50304 * 768) + 12 * 12 * 4 * 64 ** 2 * 768
    assert train_step.step_flops(config, B, T) == expected
