"""The drift bound's grid argument (drift.on_the_grid), checked against real roundings."""
import math

import pytest
import torch

from lora_state.drift import on_the_grid, step_bounds, ulp_of


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("error_ulps", [0.5, 1.0, 1.5, 1.8, 2.3, 2.45])
def test_the_grid_bound_holds_for_roundings_at_the_edges(dtype, error_ulps):
    """ours = round(real + e) with |e| <= the key's error before this rounding (earlier roundings and fp32
    arithmetic), the exact result = round(real + x) with |x| <= its arithmetic: both final roundings counted as
    half an ulp, as step_bounds counts them. Values sit on the binade edge and at quarter ulps, errors at their
    extremes (error_ulps 0.5: the step after a re-base; 1.0: two steps; 1.5: three; 1.8: one of the two values
    below the top binade, where the bound is not a whole number of ulps), and on the edge of the binade below."""
    generator = torch.Generator().manual_seed(int(error_ulps * 10))
    magnitude = 1.7
    unit = ulp_of(magnitude, dtype)
    arithmetic = 3e-4 * unit
    before_rounding = error_ulps * unit + arithmetic
    bound = before_rounding + 0.5 * unit + arithmetic + 0.5 * unit
    top = 2.0 ** math.floor(math.log2(magnitude))
    near_edge = top + unit * torch.randint(-16, 16, (4000,), generator=generator) / 4
    near_lower_edge = top / 2 + unit * torch.randint(-16, 16, (4000,), generator=generator) / 8
    anywhere = torch.rand(4000, generator=generator, dtype=torch.float64) * (magnitude - 2 * bound)
    real = torch.cat([near_edge.double(), near_lower_edge.double(), anywhere]) * \
        torch.where(torch.rand(12000, generator=generator) < 0.5, -1, 1)
    snapped = on_the_grid(bound, dtype, torch.float32, magnitude)
    assert snapped < bound
    worst = 0.0
    for sign in (-1.0, 1.0):
        for exact_side in (-1.0, 0.0, 1.0):
            ours = (real + sign * before_rounding).clamp(-magnitude, magnitude).to(dtype)
            exact = (real + exact_side * arithmetic).to(dtype)
            distance = float((ours.double() - exact.double()).abs().max())
            assert distance <= snapped, (distance / unit, snapped / unit, bound / unit)
            worst = max(worst, distance)
    if error_ulps == 1.8:      # one value below the binade: a distance over the bound's whole ulps is reached
        assert worst > math.floor(bound / unit) * unit
    if error_ulps == 1.0:      # two delta steps after a re-base: counted 2 ulp + a little, 2 ulp on the grid
        assert snapped == worst == 2 * unit
    if error_ulps == 1.5:      # three: counted 2.5 ulp + a little, still 2 ulp on the grid
        assert snapped == worst == 2 * unit
    if error_ulps == 1.8:      # one value in the binade below: a multiple of half an ulp, 2.5 ulp reached
        assert snapped == worst == 2.5 * unit


def test_no_grid_bound_where_it_does_not_hold():
    unit = ulp_of(1.7, torch.float16)
    assert on_the_grid(2.001 * unit, torch.float16, torch.float16, 1.7) == 2.001 * unit    # fp16 work: no rounding
    assert on_the_grid(2.001 * unit, torch.float32, torch.float32, 1.7) == 2.001 * unit    # fp32: none either
    assert on_the_grid(0.3, torch.float16, torch.float32, 1.9) == 0.3      # the exact result may reach 2.0's binade
    tiny = torch.finfo(torch.float16).tiny
    assert on_the_grid(3 * tiny, torch.float16, torch.float32, tiny) == 3 * tiny           # subnormals


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_guessed_magnitude_predicts_no_less_than_the_measured_one(dtype):
    """A step by a term with no bound (Tucker LoCon, ...): the planner assumes twice the magnitude before and
    reports in ulps at `before`; the applier measures the magnitude after writing. The prediction must not be
    below what the applier then finds, or auto plans a delta step that lands over its budget (the stateful test
    found one: bf16, 1.875 -> 1.984375, where the applier's bound cannot take the grid near the binade's top
    while the assumed magnitude's coarser grid had snapped it to 2 ulp)."""
    before = 1.875
    unit = ulp_of(before, dtype)
    common = dict(base_drift=unit, base_error=unit * 1.0001, before=before, old_terms=[(None, 0.5)],
                  new_terms=[(None, -1.0)], step_terms=[(None, -1.5)], clean_magnitude=None)
    predicted, _, _, unit_magnitude = step_bounds(dtype, torch.float32, **common)
    predicted_ulps = predicted / ulp_of(unit_magnitude, dtype)
    for after in (before, 1.984375, 1.999, 2.5, 3.7):
        drift, _, magnitude, _ = step_bounds(dtype, torch.float32, measure_after=lambda: after, **common)
        assert drift / ulp_of(magnitude, dtype) <= predicted_ulps, (after, drift / unit, predicted_ulps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ulp_of_is_the_spacing_of_the_binade_even_just_below_a_power_of_two(dtype):
    """math.log2 rounds up just below a power of two (log2(8 - 2^-50) == 3.0): the binade must come from the bits."""
    bits = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}[dtype]
    for exponent in range(-10, 12):
        power = 2.0 ** exponent
        below = math.nextafter(power, 0.0)
        assert ulp_of(power, dtype) == 2.0 ** (exponent - bits)
        assert ulp_of(below, dtype) == 2.0 ** (exponent - 1 - bits)
        # the spacing of dtype's own grid there (exactly representable values of the binade below)
        grid = torch.tensor([power / 2], dtype=dtype)
        assert float(torch.nextafter(grid, torch.tensor([power], dtype=dtype)) - grid) == ulp_of(below, dtype)
    assert ulp_of(0.0, dtype) == ulp_of(torch.finfo(dtype).tiny, dtype)
