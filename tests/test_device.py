"""Device selection: every branch decided on the CPU, with the GPU list as data."""
import pytest

from deepbleed_bids.model.device import (CPU_BF16_FLAGS, configure, cpu_flags, plan_device,
                                       plan_precision, strategy_for)


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


# ---------------------------------------------------------------- precision

BF16_CPU = {"avx512f", "avx512_bf16"}


def test_precision_default_is_fp32_everywhere():
    assert plan_device("cpu", [], flags=BF16_CPU)["precision"] == "fp32"
    assert plan_device("gpu", ["g0"], gpu_capability=(8, 0))["precision"] == "fp32"


def test_auto_precision_picks_bf16_only_where_the_hardware_has_it():
    assert plan_precision("auto", flags=BF16_CPU) == ("bf16", [])
    assert plan_precision("auto", flags={"amx_bf16", "amx_tile"}) == ("bf16", [])
    assert plan_precision("auto", flags={"avx2", "avx512f"}) == ("fp32", [])
    assert plan_precision("auto", use_gpu=True, gpu_capability=(8, 6)) == ("bf16", [])
    assert plan_precision("auto", use_gpu=True, gpu_capability=(7, 0)) == ("fp16", [])
    assert plan_precision("auto", use_gpu=True, gpu_capability=(6, 1)) == ("fp32", [])


def test_unsupported_precision_falls_back_to_fp32_with_a_reason():
    prec, why = plan_precision("bf16", flags={"avx2"})
    assert prec == "fp32" and "AVX512-BF16" in why[0]
    prec, why = plan_precision("bf16", use_gpu=True, gpu_capability=(7, 5))
    assert prec == "fp32" and "7.5" in why[0]
    prec, why = plan_precision("fp16", flags=BF16_CPU)  # fp16 is for GPUs
    assert prec == "fp32" and "needs a GPU" in why[0]
    with pytest.raises(ValueError):
        plan_precision("int8")


def test_gpu_requested_absent_auto_precision_follows_the_cpu():
    plan = plan_device("gpu", [], precision="auto", flags=BF16_CPU)
    assert (plan["device"], plan["precision"], plan["mixed_precision"]) == ("/CPU:0", "bf16", False)
    plan = plan_device("gpu", [], precision="auto", flags={"avx2"})
    assert plan["precision"] == "fp32" and plan["requested_precision"] == "auto"


def test_mixed_precision_switch_is_fp16_and_precision_wins():
    assert plan_device("auto", ["g0"], mixed_precision=True)["precision"] == "fp16"
    assert plan_device("auto", ["g0"], mixed_precision=True, precision="fp32")["precision"] == "fp32"


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx512f", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_configure_applies_the_keras_policy_of_the_plan():
    import keras

    try:
        plan = configure("cpu", threads=2, precision="auto")
        expected = "mixed_bfloat16" if set(CPU_BF16_FLAGS) & cpu_flags() else "float32"
        assert keras.mixed_precision.global_policy().name == expected
        assert plan["precision"] == {"mixed_bfloat16": "bf16", "float32": "fp32"}[expected]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_command_line_precision_and_its_mixed_precision_alias(tmp_path):
    from deepbleed_bids.cli.parser import build_parser
    from deepbleed_bids.cli.run import config_from_args

    def precision(*extra):
        args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant", *extra])
        return config_from_args(args).precision

    assert precision() == "fp32"
    assert precision("--precision", "auto") == "auto"
    assert precision("--mixed-precision") == "fp16"
    assert precision("--mixed-precision", "--precision", "bf16") == "bf16"


def test_resolving_a_model_does_not_import_keras():
    """The run resolves its model before nipype starts; keras (seconds) loads only to build it."""
    code = ("import sys; from deepbleed_bids.model.zoo import resolve_model, PUBLISHED_WIDTH; "
            "resolve_model('synthetic-demo'); assert 'keras' not in sys.modules, 'keras imported'; "
            "from deepbleed_bids.model.vnet import PUBLISHED_WIDTH as W; assert W == PUBLISHED_WIDTH")
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_warm_imports_loads_modules_on_a_background_thread():
    import sys

    from deepbleed_bids.execution import warm_imports

    thread = warm_imports(("json", "deepbleed_bids.no_such_module"))
    thread.join(30)
    assert not thread.is_alive() and thread.daemon and "json" in sys.modules
