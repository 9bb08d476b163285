"""Layers, one module per family."""

from jitnn.layers.activations import GELU, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from jitnn.layers.conv import Conv2D
from jitnn.layers.dense import Dense
from jitnn.layers.dropout import Dropout
from jitnn.layers.embedding import Embedding
from jitnn.layers.normalization import BatchNorm, LayerNorm
from jitnn.layers.pooling import AvgPool2D, MaxPool2D
from jitnn.layers.recurrent import GRU, LSTM, RNN, Bidirectional
from jitnn.layers.reshape import Flatten, Reshape

__all__ = ["Dense", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
           "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "Reshape", "Dropout", "LayerNorm", "BatchNorm", "Embedding",
           "RNN", "GRU", "LSTM", "Bidirectional"]
