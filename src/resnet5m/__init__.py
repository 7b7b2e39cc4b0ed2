"""resnet5m: design, train, compare and ship residual networks under 5M parameters for CIFAR-10."""

__version__ = "0.1.0"
