"""Data: DataModules (image and text, one shared base), checked ImageFolder loading, text readers."""

from mrl.data.datamodules import (DATAMODULES, CIFAR10DataModule, CIFAR100DataModule, ClassificationDataModule,
                                  DigitsDataModule, ImageDataModule, ImageFolderDataModule, ImageNetDataModule,
                                  TextDataModule, create_datamodule)
from mrl.data.image_folder import ImageFolderDataset, extract_archive, scan_image_folder
from mrl.data.image_text import ImageTextDataModule  # registers data.name=image_text (image-caption pairs)
from mrl.data.mlm import MLMTextDataModule  # registers data.name=mlm_text (masked plain text)
from mrl.data.pairs import PairsDataModule  # registers data.name=pairs (contrastive pairs and triplets)
from mrl.data.text_eval import TextEvalDataModule  # registers data.name=text_eval (STS-B, Cranfield, BEIR)

__all__ = ["DATAMODULES", "CIFAR10DataModule", "CIFAR100DataModule", "ClassificationDataModule",
           "DigitsDataModule", "ImageDataModule", "ImageFolderDataModule", "ImageNetDataModule", "ImageFolderDataset",
           "ImageTextDataModule", "MLMTextDataModule",
           "PairsDataModule", "TextDataModule", "TextEvalDataModule", "create_datamodule", "extract_archive",
           "scan_image_folder"]
