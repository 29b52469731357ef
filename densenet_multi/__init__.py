"""densenet_multi: DenseNet in four frameworks under one spec."""

__version__ = "0.1.0"
