"""Where the network runs: CPU, one GPU, or several (MirroredStrategy); mixed precision.

:func:`plan_device` is pure (it takes the list of visible GPUs) so the choice,
including every fallback, is tested on machines without a GPU.
"""
import os

CHOICES = ("auto", "cpu", "gpu")


def plan_device(requested="auto", gpus=(), mixed_precision=False, multi_gpu=True):
    """Decide device, distribution strategy and precision; never fails, warns instead."""
    if requested not in CHOICES:
        raise ValueError(f"device must be one of {CHOICES}, not {requested!r}")
    gpus = list(gpus)
    warnings = []
    use_gpu = bool(gpus) and requested in ("auto", "gpu")
    if requested == "gpu" and not gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        warnings.append(
            "--device gpu was requested but TensorFlow sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={visible!r}; with Docker use --gpus all, with Singularity --nv, "
            "and install the CUDA build of TensorFlow): running on the CPU."
        )
    if mixed_precision and not use_gpu:
        warnings.append("mixed precision needs a GPU: running in float32 on the CPU.")
    n_gpus = len(gpus) if use_gpu else 0
    strategy = "mirrored" if use_gpu and multi_gpu and n_gpus > 1 else "default"
    return {
        "device": "/GPU:0" if use_gpu else "/CPU:0",
        "n_gpus": n_gpus,
        "strategy": strategy,
        "mixed_precision": bool(mixed_precision and use_gpu),
        "requested": requested,
        "warnings": warnings,
    }


def visible_gpus():
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def configure(requested="auto", mixed_precision=False, threads=None, multi_gpu=True):
    """Apply a device plan to TensorFlow (call before building models); returns the plan."""
    import keras
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # TF already initialised in this process: keep its setting
            pass
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    plan = plan_device(requested, [g.name for g in gpus], mixed_precision, multi_gpu)
    keras.mixed_precision.set_global_policy("mixed_float16" if plan["mixed_precision"] else "float32")
    return plan


def strategy_for(plan):
    """The tf.distribute strategy of a plan (training uses it; inference runs on one device)."""
    import tensorflow as tf

    if plan["strategy"] == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(plan["device"])
