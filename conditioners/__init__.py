"""Conditioner plugins: text, ControlNet layouts, T2I-Adapter layouts. Your own: subclass `Conditioner`."""

from conditioners.base import Conditioner, ConditionSide, LayoutConditioner, UNetInputs
from conditioners.controlnet import ControlNetConditioner
from conditioners.t2i_adapter import T2IAdapterConditioner
from conditioners.text import TextConditioner

__all__ = ["Conditioner", "ConditionSide", "LayoutConditioner", "UNetInputs", "TextConditioner",
           "ControlNetConditioner", "T2IAdapterConditioner"]
