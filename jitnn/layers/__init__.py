"""Layers, one module per family."""

from jitnn.layers.activations import GELU, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from jitnn.layers.dense import Dense

__all__ = ["Dense", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]
