"""Layers, one module per family."""

from jitnn.layers.activations import GELU, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from jitnn.layers.attention import MultiHeadAttention
from jitnn.layers.conv import Conv1D, Conv2D
from jitnn.layers.dense import Dense
from jitnn.layers.dropout import Dropout
from jitnn.layers.embedding import Embedding, PositionalEmbedding
from jitnn.layers.normalization import BatchNorm, LayerNorm
from jitnn.layers.pooling import AvgPool1D, AvgPool2D, GlobalAvgPool, MaxPool1D, MaxPool2D
from jitnn.layers.recurrent import GRU, LSTM, RNN, Bidirectional
from jitnn.layers.reshape import Flatten, Reshape

__all__ = ["Dense", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAvgPool", "Flatten", "Reshape", "Dropout", "LayerNorm", "BatchNorm", "Embedding",
           "PositionalEmbedding", "MultiHeadAttention", "RNN", "GRU", "LSTM", "Bidirectional"]
