"""ITO loss plugins. Your own: subclass `EditLoss` in any importable module and name it by `class_path`."""

from losses.base import EditLoss
from losses.guidance import CosineGuidance, cosine_distance
from losses.preservation import MaskedMSEPreservation, masked_mse

__all__ = ["EditLoss", "MaskedMSEPreservation", "CosineGuidance", "masked_mse", "cosine_distance"]
