"""Where the network runs: CPU, one GPU, or several (MirroredStrategy); at what precision.

:func:`plan_device` and :func:`plan_precision` are pure (they take the visible GPUs,
their compute capabilities and the CPU's flags as data) so every choice and
fallback is tested on machines without a GPU.

Precision (``--precision``): ``fp32`` (default: the published weights' own
arithmetic), ``bf16`` or ``fp16`` (Keras mixed precision: float32 weights,
convolutions in 16 bits, the sigmoid output in float32), ``auto`` (bf16 where the
hardware has bf16 matrix units: CPUs with AVX512-BF16 or AMX-BF16, which
TensorFlow's oneDNN uses, and GPUs of compute capability >= 8.0; fp16 on older
tensor-core GPUs (7.x); fp32 otherwise). fp16 is for GPUs only. A precision the
device cannot run fast falls back to fp32 with a warning.
"""
import os

CHOICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
KERAS_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable, e.g. macOS)."""
    try:
        with open(path) as fobj:
            for line in fobj:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def plan_precision(requested="fp32", use_gpu=False, gpu_capability=None, flags=()):
    """(precision, warnings): the arithmetic the network runs in on this device.

    ``gpu_capability`` is the first GPU's CUDA compute capability, e.g. (8, 0);
    ``flags`` the CPU flags (:func:`cpu_flags`).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
    flags = set(flags)
    cap = tuple(gpu_capability or (0, 0))
    if use_gpu:
        bf16_ok, fp16_ok = cap >= (8, 0), cap >= (7, 0) or not gpu_capability
        where = f"this GPU (compute capability {cap[0]}.{cap[1]})" if gpu_capability else "this GPU"
    else:
        bf16_ok = bool(flags & set(CPU_BF16_FLAGS))
        fp16_ok = False  # TensorFlow's CPU float16 convolutions are emulated: slower, not faster
        where = "this CPU"
    if requested == "auto":
        if bf16_ok:
            return "bf16", []
        return ("fp16" if use_gpu and fp16_ok else "fp32"), []
    if requested == "bf16" and not bf16_ok:
        need = "compute capability >= 8.0" if use_gpu else "AVX512-BF16 or AMX"
        return "fp32", [f"--precision bf16: {where} has no bf16 matrix units ({need}): running in float32."]
    if requested == "fp16" and not fp16_ok:
        return "fp32", ["fp16 mixed precision needs a GPU: running in float32 on the CPU."]
    return requested, []


def plan_device(requested="auto", gpus=(), mixed_precision=False, multi_gpu=True, precision=None,
                gpu_capability=None, flags=()):
    """Decide device, distribution strategy and precision; never fails, warns instead.

    ``precision`` (see :data:`PRECISIONS`) wins over the older ``mixed_precision``
    switch, which means ``fp16``.
    """
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
    if precision is None:
        precision = "fp16" if mixed_precision else "fp32"
    chosen, why = plan_precision(precision, use_gpu, gpu_capability, flags)
    warnings += why
    n_gpus = len(gpus) if use_gpu else 0
    strategy = "mirrored" if use_gpu and multi_gpu and n_gpus > 1 else "default"
    return {
        "device": "/GPU:0" if use_gpu else "/CPU:0",
        "n_gpus": n_gpus,
        "strategy": strategy,
        "precision": chosen,
        "requested_precision": precision,
        "mixed_precision": chosen == "fp16",  # fp16 training needs loss scaling
        "requested": requested,
        "warnings": warnings,
    }


def visible_gpus():
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def _gpu_capability(gpu):
    import tensorflow as tf

    try:
        return tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or ()) or None
    except (RuntimeError, ValueError, AttributeError):
        return None


def configure(requested="auto", mixed_precision=False, threads=None, multi_gpu=True, precision=None):
    """Apply a device plan to TensorFlow (call before building models); returns the plan.

    The Keras precision policy is global: models built after this call compute in
    the plan's precision.
    """
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
    plan = plan_device(requested, [g.name for g in gpus], mixed_precision, multi_gpu, precision,
                       gpu_capability=_gpu_capability(gpus[0]) if gpus else None, flags=cpu_flags())
    keras.mixed_precision.set_global_policy(KERAS_POLICY[plan["precision"]])
    return plan


def strategy_for(plan):
    """The tf.distribute strategy of a plan (training uses it; inference runs on one device)."""
    import tensorflow as tf

    if plan["strategy"] == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(plan["device"])
