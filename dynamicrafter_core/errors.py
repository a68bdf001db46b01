"""Errors a user can act on.

Every message says what was wrong, what was received and what to do about it. They derive from ValueError (or
FileNotFoundError) so callers that only know the standard exceptions still catch them sensibly.
"""


class DynamiCrafterError(ValueError):
    """Base class of every error this package raises on purpose."""


class CheckpointError(DynamiCrafterError):
    """A weights file that cannot be read, is not DynamiCrafter, or does not match its configuration."""


class BaseCheckpointNeededError(CheckpointError):
    """A file that holds only some networks' weights (RealCam-I2V's camera weights) and loads on a base checkpoint."""


class ConfigError(DynamiCrafterError):
    """An original-format configuration this implementation cannot build."""


class InputError(DynamiCrafterError):
    """A bad image, prompt or sampler setting."""


class NumericalError(DynamiCrafterError):
    """A network produced NaN or Inf from finite inputs: damaged weights, or an overflow in half precision."""


class MissingEncoderError(DynamiCrafterError):
    """The checkpoint was pruned of a CLIP tower that the requested operation needs."""


class ModelFileNotFoundError(FileNotFoundError):
    """No checkpoint where one was expected; the message says what to download and where to put it."""
