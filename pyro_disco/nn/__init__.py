"""The networks, on whitened coordinates: the per-dimension DiScoFormer and the universal,
O(d)-equivariant one. The lowest floor of the package above ``_validation``: nothing here
imports an estimator, the pretrained registry or anything above them."""

from __future__ import annotations

from torch import nn

from pyro_disco.nn.discoformer import DiScoFormer, DiScoFormerConfig, EncodedContext
from pyro_disco.nn.universal import UniversalConfig, UniversalContext, UniversalDiScoFormer

__all__ = [
    "DiScoFormerConfig",
    "DiScoFormer",
    "EncodedContext",
    "UniversalConfig",
    "UniversalDiScoFormer",
    "UniversalContext",
    "model_from_config",
]


def model_from_config(config: dict) -> nn.Module:
    """An (untrained) network from a config dict as stored in weight files and checkpoints
    (``config.to_dict()``): the universal one when ``config["arch"] == "universal"``, else the
    per-dimension one."""
    if config.get("arch") == "universal":
        return UniversalDiScoFormer(UniversalConfig(**config))
    return DiScoFormer(DiScoFormerConfig(**config))
