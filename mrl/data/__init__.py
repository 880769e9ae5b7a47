"""Data: DataModules for image classification and checked ImageFolder loading."""

from mrl.data.datamodules import (DATAMODULES, CIFAR10DataModule, CIFAR100DataModule, ClassificationDataModule,
                                  DigitsDataModule, ImageFolderDataModule, ImageNetDataModule, create_datamodule)
from mrl.data.image_folder import ImageFolderDataset, extract_archive, scan_image_folder

__all__ = ["DATAMODULES", "CIFAR10DataModule", "CIFAR100DataModule", "ClassificationDataModule",
           "DigitsDataModule", "ImageFolderDataModule", "ImageNetDataModule", "ImageFolderDataset",
           "create_datamodule", "extract_archive", "scan_image_folder"]
