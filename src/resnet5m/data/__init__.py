"""CIFAR-10 data: sources and download, validation, stratified split, batched augmentation, loader."""

from resnet5m.data.augment import AugContext, AugmentConfig, build_augment
from resnet5m.data.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CLASSES,
    NUM_CLASSES,
    REFERENCE_PROJECTS_STD,
    Cifar10,
)
from resnet5m.data.loader import Batch, BatchLoader
from resnet5m.data.sources import cache_dir, load_cifar10, load_path
from resnet5m.data.split import stratified_split

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "CLASSES", "NUM_CLASSES", "REFERENCE_PROJECTS_STD",
    "AugContext", "AugmentConfig", "Batch", "BatchLoader", "Cifar10", "build_augment", "cache_dir",
    "load_cifar10", "load_path", "stratified_split",
]
