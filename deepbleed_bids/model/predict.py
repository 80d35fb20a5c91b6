"""Run the VNet on a template-space volume, whole or in overlapping patches."""
import itertools

import numpy as np


def patch_starts(size, patch, overlap):
    """Start indices covering ``size`` with windows of ``patch`` overlapping by ``overlap``."""
    if patch >= size:
        return [0]
    step = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def predict_volume(model, volume, patch_size=0, overlap=0.5, batch_size=1, device="/CPU:0"):
    """Sigmoid probability map (float32, same shape as ``volume``).

    ``volume`` is the network input exactly as the published model expects it:
    raw HU, 0 outside the brain, on the template grid. ``patch_size`` 0 runs the
    whole volume at once; 64 or 32 tiles it and averages overlapping windows.
    """
    import tensorflow as tf

    # a graph, not op-by-op eager execution: measurably faster for these large convolutions
    # float32 out whatever the compute precision (bf16/fp16 policies, model.device)
    forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
    volume = np.asarray(volume, dtype=np.float32)
    if not patch_size or all(s <= patch_size for s in volume.shape):
        with tf.device(device):
            out = forward(tf.constant(volume[None, ..., None]))
        return np.asarray(out, dtype=np.float32)[0, ..., 0]

    total = np.zeros(volume.shape, np.float32)
    count = np.zeros(volume.shape, np.float32)
    corners = list(itertools.product(*(patch_starts(s, patch_size, overlap) for s in volume.shape)))
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        batch = np.stack([volume[x:x + patch_size, y:y + patch_size, z:z + patch_size]
                          for x, y, z in chunk])[..., None]
        with tf.device(device):
            out = np.asarray(forward(tf.constant(batch)), dtype=np.float32)[..., 0]
        for (x, y, z), prob in zip(chunk, out):
            total[x:x + patch_size, y:y + patch_size, z:z + patch_size] += prob
            count[x:x + patch_size, y:y + patch_size, z:z + patch_size] += 1
    return total / np.maximum(count, 1)
