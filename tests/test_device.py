"""Device selection: every branch decided on the CPU, with the GPU list as data."""
import pytest

from deepbleed_bids.model.device import configure, plan_device, strategy_for


def test_auto_without_gpu_uses_cpu():
    plan = plan_device("auto", [])
    assert plan["device"] == "/CPU:0" and plan["n_gpus"] == 0 and not plan["warnings"]


def test_gpu_requested_but_absent_falls_back_with_warning():
    plan = plan_device("gpu", [], mixed_precision=True)
    assert plan["device"] == "/CPU:0"
    assert not plan["mixed_precision"]
    assert any("sees no GPU" in w for w in plan["warnings"])
    assert any("mixed precision needs a GPU" in w for w in plan["warnings"])


def test_one_and_several_gpus():
    one = plan_device("auto", ["/physical_device:GPU:0"], mixed_precision=True)
    assert (one["device"], one["strategy"], one["mixed_precision"]) == ("/GPU:0", "default", True)
    many = plan_device("gpu", ["/physical_device:GPU:0", "/physical_device:GPU:1"])
    assert (many["n_gpus"], many["strategy"]) == (2, "mirrored")
    single = plan_device("gpu", ["a", "b"], multi_gpu=False)
    assert single["strategy"] == "default"


def test_cpu_forced_even_with_gpu():
    assert plan_device("cpu", ["/physical_device:GPU:0"])["device"] == "/CPU:0"


def test_bad_choice():
    with pytest.raises(ValueError):
        plan_device("tpu", [])


def test_configure_here_is_cpu_float32():
    import keras

    plan = configure("gpu", mixed_precision=True, threads=2)
    assert plan["device"] == "/CPU:0" and plan["warnings"]
    assert keras.mixed_precision.global_policy().name == "float32"
    assert type(strategy_for(plan)).__name__ == "OneDeviceStrategy"
