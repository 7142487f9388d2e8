"""Our CIFAR-10-C corruptions against the reference generator's outputs (../shared golden set).

The golden set (``../shared/data/cifar10c-golden``, see its README) holds what Hendrycks &
Dietterich's ``make_cifar_c.py`` produced on 100 clean images for the 19 corruptions x 5
severities. Three checks per (corruption, severity), thresholds from that README
(``benchmarks/corruption_golden.py`` prints the same numbers as a table):

* deterministic corruptions: mean |ours - reference| <= 1 uint8 level (motion blur: the
  reference's one random angle per image is replayed);
* random corruptions, the reference's random draws replayed into our functions: <= 1 level;
* random corruptions, our own random streams (``corrupt(..., seed)``, seeds 0-2 averaged): mean
  PSNR within 0.5 dB and the perturbation's standard deviation within 5% of ``stats.json``.
"""
import numpy as np
import pytest

from benchmarks import corruption_golden as golden

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not golden.available(),
                       reason=f"needs the reference CIFAR-10-C outputs in ../shared/data/cifar10c-golden, "
                              f"absent here ({golden.GOLDEN}); set CL_SHARED to the folder holding "
                              "data/cifar10c-golden"),
]

SEVERITIES = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def data():
    return golden.load_golden()


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", golden.DETERMINISTIC)
def test_deterministic_corruption_matches_reference(data, name, severity):
    arrays, _ = data
    mad = golden.measure_deterministic(arrays, name, severity)
    assert mad <= golden.MAX_MEAN_ABS_DIFF, f"{name} {severity}: mean |ours - reference| = {mad:.3f} levels"


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", golden.RANDOM)
def test_random_corruption_with_reference_draws_matches_reference(data, name, severity):
    arrays, _ = data
    mad = golden.measure_replayed(arrays, name, severity)
    assert mad <= golden.MAX_MEAN_ABS_DIFF, f"{name} {severity}: mean |ours - reference| = {mad:.3f} levels"


@pytest.mark.slow               # 150 corruptions of 100 images (about half of this file's time)
@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", golden.RANDOM)
def test_random_corruption_statistics_match_reference(data, name, severity):
    arrays, stats = data
    d_psnr, d_std = golden.measure_statistics(arrays, stats, name, severity)
    assert d_psnr <= golden.MAX_PSNR_DB, f"{name} {severity}: mean PSNR differs by {d_psnr:.2f} dB"
    assert d_std <= golden.MAX_STD_REL, f"{name} {severity}: std of the perturbation differs by {100 * d_std:.1f}%"


def test_statistics_formula_reproduces_stats_json(data):
    """Our PSNR / std formulas give stats.json's numbers on the reference arrays themselves."""
    arrays, stats = data
    for key in ("gaussian_noise_3", "frost_5", "fog_2", "spatter_4", "brightness_1"):
        s = golden.statistics(arrays[key], arrays["clean"])
        assert s["psnr_db_mean"] == pytest.approx(stats[key]["psnr_db_mean"], abs=1e-3)
        assert s["std_diff"] == pytest.approx(stats[key]["std_diff"], abs=1e-3)


def test_replay_is_what_makes_random_outputs_match(data):
    """Without the reference's draws (our own stream), a random corruption is far from the golden
    array pixel by pixel: the replayed comparison above is not passing by accident."""
    arrays, _ = data
    x = golden.to_nchw(arrays["clean"])
    ours = golden.to_nhwc(golden.corrupt(x, "gaussian_noise", 3, seed=0))
    assert golden.mean_abs_diff(ours, arrays["gaussian_noise_3"]) > 10 * golden.MAX_MEAN_ABS_DIFF
    draws = golden.ReferenceDraws(seed=1)
    first = draws.normal(0.0, 1.0, (3, 32, 32))
    assert np.array_equal(first, np.random.RandomState(1).normal(0.0, 1.0, (32, 32, 3)).transpose(2, 0, 1))
