"""Training: datasets, augmentation, synthetic tumors, losses, trainer."""
