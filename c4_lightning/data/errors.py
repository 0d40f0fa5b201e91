"""Exceptions raised by the data layer.

Every message names the bad thing and says what to do about it.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be found, read or used as asked (unknown id, corrupt file, bad values, bad sizes)."""


class SamplerError(ValueError):
    """Invalid arguments or state for :class:`~c4_lightning.data.sampler.ClusterBatchSampler`."""
