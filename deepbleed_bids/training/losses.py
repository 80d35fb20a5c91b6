"""Losses: the Dice loss of Milletari et al. (V-Net, 2016), as used by DeepBleed.

``1 - 2 sum(p g) / (sum(p^2) + sum(g^2))`` over the whole mini-batch (all voxels of
all samples in one sum, as if the batch were one volume): a sample without
hemorrhage then still pays for false positives relative to the batch's lesions,
which a per-sample mean would hide. ``smooth`` (1 voxel) keeps an empty batch defined.
"""
import tensorflow as tf

LOSSES = ("dice", "dice+bce")


def dice_loss(y_true, y_pred, smooth=1.0):
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    num = 2.0 * tf.reduce_sum(y_true * y_pred) + smooth
    den = tf.reduce_sum(y_pred * y_pred) + tf.reduce_sum(y_true * y_true) + smooth
    return 1.0 - num / den


def bce_loss(y_true, y_pred, eps=1e-6):
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), eps, 1.0 - eps)
    return -tf.reduce_mean(y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred))


def get_loss(name):
    """The loss function called ``name`` (``dice``: the paper's; ``dice+bce`` adds cross-entropy)."""
    if name == "dice":
        return dice_loss
    if name == "dice+bce":
        return lambda t, p: dice_loss(t, p) + bce_loss(t, p)
    raise ValueError(f"unknown loss {name!r}; use one of {LOSSES}")
