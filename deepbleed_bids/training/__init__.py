"""Retraining the DeepBleed VNet on a site's own CT and reference masks (Sharrock et al. 2020 recipe).

Modules: ``data`` (pairs of CT and reference mask, preprocessing through nipype, the
split), ``augment`` (left-right flips, elastic x/y deformation, lesion-biased
patches), ``losses`` (Milletari Dice), ``loop`` (the training loop with
checkpoints and resume), ``card`` (the exported model and its card).
"""
