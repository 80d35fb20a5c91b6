"""GPU code on a real GPU: the distribution strategy, a mixed-precision training step, and
the forward pass compared with the CPU's.

conftest.py hides GPUs from every test (CPU results are the reference, and one test
must not grab a GPU's memory for the rest). These checks run in subprocesses that see
the GPUs again (conftest keeps the original CUDA_VISIBLE_DEVICES); without a GPU they
skip and say why. ``pytest -m gpu`` runs only these.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
TOP = Path(__file__).resolve().parent.parent
ORIGINAL = "DEEPBLEED_TEST_CUDA_VISIBLE_DEVICES"  # set by conftest.py
UNSET = "<unset>"


def gpu_env():
    """This process's environment with the GPUs visible as they were before conftest hid them."""
    env = dict(os.environ)
    original = env.get(ORIGINAL, UNSET)
    if original == UNSET:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = original
    env["PYTHONPATH"] = os.pathsep.join([str(TOP), env.get("PYTHONPATH", "")])
    return env


def run_gpu(code, timeout=600):
    """Run ``code`` in a fresh interpreter with the GPUs visible; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=gpu_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpus():
    found = run_gpu("""
        import json, tensorflow as tf
        print(json.dumps({"gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
                          "cuda_build": tf.test.is_built_with_cuda(), "version": tf.__version__}))
    """)
    if not found["gpus"]:
        pytest.skip(f"no GPU visible to TensorFlow {found['version']} (built with CUDA: {found['cuda_build']}; "
                    f"CUDA_VISIBLE_DEVICES={gpu_env().get('CUDA_VISIBLE_DEVICES', UNSET)!r})")
    return found["gpus"]


def test_gpus_hidden_here_and_restored_for_the_gpu_checks():
    """Runs everywhere: the test process sees no GPU unless the user chose one; the GPU
    checks' environment has the original visibility."""
    original = os.environ.get(ORIGINAL)
    assert original is not None, "conftest.py must record the original CUDA_VISIBLE_DEVICES"
    env = gpu_env()
    if original == UNSET:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
        assert "CUDA_VISIBLE_DEVICES" not in env
    else:  # set by the user: kept for every test
        assert os.environ["CUDA_VISIBLE_DEVICES"] == original == env["CUDA_VISIBLE_DEVICES"]


def test_strategy_on_the_gpus(gpus):
    got = run_gpu("""
        import json
        import tensorflow as tf
        from deepbleed_bids.model.device import configure, strategy_for
        plan = configure("gpu")
        chosen = strategy_for(plan)
        mirrored = strategy_for({**plan, "strategy": "mirrored"})  # what several GPUs use
        with mirrored.scope():
            v = tf.Variable(tf.ones((4,)))
        per_replica = mirrored.run(lambda: tf.reduce_sum(v) * 1.0)
        total = mirrored.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        print(json.dumps({"plan": plan, "chosen": type(chosen).__name__,
                          "replicas": mirrored.num_replicas_in_sync, "device": v.device,
                          "total": float(total)}))
    """)
    plan = got["plan"]
    assert plan["device"] == "/GPU:0" and plan["n_gpus"] == len(gpus) and not plan["warnings"]
    assert got["chosen"] == ("MirroredStrategy" if len(gpus) > 1 else "OneDeviceStrategy")
    assert got["replicas"] == len(gpus)
    assert "GPU" in got["device"]
    assert got["total"] == pytest.approx(4.0 * len(gpus))


def test_mixed_precision_training_step(gpus):
    got = run_gpu("""
        import json
        import numpy as np
        import tensorflow as tf
        from deepbleed_bids.model.device import configure
        from deepbleed_bids.training.loop import TrainParams, _step_fn, build
        from deepbleed_bids.training.losses import get_loss
        params = TrainParams(width=2, kernel_size=3, dropout=0.0, patch_size=32, batch_size=2,
                             mixed_precision=True, device="gpu")
        plan = configure("gpu", mixed_precision=True)
        strategy, model, optimizer = build(params, plan)
        step = _step_fn(strategy, model, optimizer, get_loss("dice"), plan["mixed_precision"])
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 0.9, (2, 32, 32, 32, 1)).astype("float32")
        y = np.zeros_like(x)
        y[:, 10:20, 10:20, 10:20] = 1
        # 5 steps: dynamic loss scaling may skip a first step whose scaled float16 gradients overflow
        ds = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat(5))
        before = [w.numpy().copy() for w in model.trainable_variables]
        losses = [float(step(a, b)) for a, b in ds]
        changed = sum(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_variables))
        layer = model.get_layer("down_1_convolution")
        print(json.dumps({"plan": plan, "losses": losses, "changed": changed,
                          "n_vars": len(before), "compute": layer.compute_dtype,
                          "variable": layer.weights[0].dtype if isinstance(layer.weights[0].dtype, str)
                          else layer.weights[0].dtype.name,
                          "output": model.output.dtype if isinstance(model.output.dtype, str)
                          else model.output.dtype.name,
                          "optimizer": type(optimizer).__name__}))
    """)
    assert got["plan"]["mixed_precision"] and got["plan"]["device"] == "/GPU:0"
    assert got["compute"] == "float16" and got["variable"] == "float32" and got["output"] == "float32"
    assert got["optimizer"] == "LossScaleOptimizer"
    assert len(got["losses"]) == 5 and all(0 < x <= 1 for x in got["losses"])  # finite Dice losses
    assert got["changed"] == got["n_vars"]  # every weight moved: the scaled gradients were applied


def test_forward_on_the_gpu_equals_the_cpu(gpus):
    """The bundled model on a brain-like volume: the GPU's map is the CPU's, to float precision."""
    got = run_gpu("""
        import json
        import numpy as np
        import tensorflow as tf
        tf.config.experimental.enable_tensor_float_32_execution(False)  # full float32 matmuls
        from deepbleed_bids.model.device import configure
        from deepbleed_bids.model.predict import predict_volume
        from deepbleed_bids.model.zoo import load_model, resolve_model
        configure("gpu")
        model = load_model(resolve_model("synthetic-demo"))
        rng = np.random.default_rng(0)
        vol = np.zeros((128, 128, 128), np.float32)
        vol[24:104, 20:108, 30:100] = rng.normal(35, 8, (80, 88, 70))  # brain-like HU
        vol[50:66, 60:76, 50:64] = rng.normal(65, 6, (16, 16, 14))  # a hyperdense lump
        gpu = predict_volume(model, vol, patch_size=64, device="/GPU:0")
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        cpu = predict_volume(model, vol, patch_size=64, device="/CPU:0")
        print(json.dumps({"max_diff": float(np.abs(gpu - cpu).max()), "gpu_peak_bytes": int(peak),
                          "mask_gpu": int((gpu >= 0.5).sum()), "mask_cpu": int((cpu >= 0.5).sum()),
                          "spread": float(cpu.std())}))
    """)
    assert got["gpu_peak_bytes"] > 0  # the GPU did the work
    assert got["spread"] > 1e-3  # a non-trivial map, so equality means something
    assert got["max_diff"] < 1e-3
    assert abs(got["mask_gpu"] - got["mask_cpu"]) <= max(10, 0.001 * got["mask_cpu"])
