"""The ``resnet5m`` command line."""
