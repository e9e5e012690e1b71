"""Neural-network building blocks: Module and Parameter, containers, layers, activations, init.

``import minivae.nn as nn``; weights are initialized from ``nn.init``'s seeded generator (see
``minivae.nn.init`` for how to make a model reproducible).
"""
from . import init
from .layers import (ACTIVATIONS, ELU, BatchNorm1d, Identity, LeakyReLU, Linear, LinearReLU,
                     ReLU, Sigmoid,
                     Softplus, Tanh, activation)
from .module import IncompatibleKeys, Module, ModuleList, Parameter, Sequential, StateDictError, evaluating

__all__ = ["init", "Module", "Parameter", "ModuleList", "Sequential", "StateDictError", "evaluating",
           "IncompatibleKeys", "Linear", "LinearReLU", "BatchNorm1d", "Identity", "ReLU", "LeakyReLU", "ELU",
           "Tanh", "Sigmoid", "Softplus", "ACTIVATIONS", "activation"]
