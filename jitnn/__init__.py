"""jitnn: functional neural networks for the CPU, compiled with Numba.

A model is a value: a tree of frozen records that hold read-only parameter arrays. Each
layer answers three questions through compiled kernels (its output, the gradient to its
input, the gradient to its parameters); the passes, losses, optimizers and checks are
written once against those answers.
"""

from jitnn import init, optim, plan, random, testing, tree
from jitnn.chain import Chain, compose, pipe
from jitnn.data import batches
from jitnn.combinators import Add, Concatenate, Parallel, Residual
from jitnn.layers import (
    GELU, GRU, LSTM, RNN, AvgPool1D, AvgPool2D, BatchNorm, Bidirectional, Conv1D, Conv2D, Dense, Dropout, Embedding, Flatten,
    GlobalAvgPool, Identity, LayerNorm, LeakyReLU, MaxPool1D, MaxPool2D, MultiHeadAttention, PositionalEmbedding, ReLU, Reshape,
    Sigmoid, Softmax, Tanh,
)
from jitnn.losses import BinaryCrossEntropy, Huber, KLDivergence, Loss, MeanSquaredError, SoftmaxCrossEntropy, loss, registered_losses
from jitnn.passes import Trace, backward, forward, value_and_grad, value_grad_and_update
from jitnn._blas import outer_sum
from jitnn.protocol import Array, Composite, Context, Factored, Kernels, Layer, Residuals, buffer, layer, param, registered_layers, require_shape
from jitnn.io import load, save
from jitnn.metrics import accuracy, confusion_matrix, top_k_accuracy
from jitnn.step import CompiledStep, compile_step
from jitnn.predict import CompiledPredict, compile_predict
from jitnn.inspection import Summary, SummaryRow, summary
from jitnn.train import FitResult, NonFiniteLossError, fit, train_step
from jitnn.plotting import plot_history
from jitnn import callbacks, data, datasets, interop, metrics, onnx, validate

__version__ = "0.1.0"

__all__ = [
    # the protocol
    "Layer", "Composite", "layer", "param", "buffer", "Kernels", "Residuals", "Factored", "outer_sum", "Array", "Context", "require_shape", "registered_layers",
    # layers and composition
    "Dense", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
    "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAvgPool", "Flatten", "Reshape", "Dropout",
    "LayerNorm", "BatchNorm", "Embedding",
    "PositionalEmbedding", "MultiHeadAttention",
    "RNN", "GRU", "LSTM", "Bidirectional",
    "Chain", "pipe", "compose", "Residual", "Concatenate", "Parallel", "Add",
    # passes
    "forward", "backward", "value_and_grad", "value_grad_and_update", "Trace",
    # losses
    "Loss", "loss", "registered_losses", "SoftmaxCrossEntropy", "MeanSquaredError", "BinaryCrossEntropy", "Huber", "KLDivergence",
    # training
    "fit", "train_step", "FitResult", "NonFiniteLossError", "batches", "compile_step", "CompiledStep", "plot_history",
    # prediction
    "compile_predict", "CompiledPredict",
    # checkpoints
    "save", "load",
    # metrics and inspection
    "accuracy", "top_k_accuracy", "confusion_matrix", "summary", "Summary", "SummaryRow",
    # modules
    "init", "optim", "plan", "random", "testing", "tree", "callbacks", "data", "datasets", "interop", "metrics", "onnx", "validate",
]
