"""Exceptions that carry a message meant for the user."""


class DeepBleedError(Exception):
    """Base class: the message says what is wrong and what to do."""


class InputError(DeepBleedError):
    """A user-supplied file or argument cannot be used."""


class AssetError(DeepBleedError):
    """A template or model weights could not be obtained or verified."""


class ModelError(DeepBleedError):
    """Weights do not fit the network."""
