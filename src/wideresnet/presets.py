"""Named presets, as flat config values: the paper's recipes (PAPER.md "Training recipes") and
the modern ones WRN papers use today (opt-in; the paper's presets are unchanged).

  cifar    the Config defaults: SGD Nesterov 0.9, lr 0.1 x0.2 at 60/120/160, 200 epochs,
           weight decay 5e-4, batch 128, flip + crop, mean/std.
  svhn     lr 0.01 x0.1 at 80/120, 160 epochs, dropout 0.4, no augmentation, /255,
           train+extra.
  cifar-cutout          Cutout (DeVries & Taylor 2017, arXiv 1708.04552): the WRN recipe with
           dropout 0.3 and a 16x16 Cutout (8x8 for CIFAR-100: --cutout 8); WRN-28-10: 3.08% on
           CIFAR-10, 18.41% on CIFAR-100 in its paper.
  cifar-autoaugment     AutoAugment (Cubuk et al. 2019, arXiv 1805.09501): its CIFAR-10
           policy, Cutout 16, cosine lr 0.1, 200 epochs, batch 128, weight decay 5e-4;
           WRN-28-10: 2.6% on CIFAR-10, 17.1% on CIFAR-100.
  cifar-trivialaugment  TrivialAugment (Mueller & Hutter 2021, arXiv 2103.10158): the wide
           space, Cutout 16, cosine lr 0.1, 200 epochs, batch 128, weight decay 5e-4;
           WRN-28-10: 2.5% on CIFAR-10, 15.7% on CIFAR-100.
  cifar-sam             SAM (Foret et al. 2021, arXiv 2010.01412): rho 0.05 on the paper's
           augmentation, cosine lr 0.1, 200 epochs, weight decay 5e-4; WRN-28-10: 2.7% on
           CIFAR-10 with basic augmentation (its Table 1).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {},  # the Config defaults are the paper's CIFAR recipe
    "svhn": {
        "dataset": "svhn",
        "lr": 0.01,
        "milestones": (80, 120),
        "lr_decay": 0.1,
        "epochs": 160,
        "dropout": 0.4,
        "augment": False,
        "preprocess": "div255",
        "train_split": "train+extra",
    },
    "cifar-cutout": {"cutout": 16, "dropout": 0.3},
    "cifar-autoaugment": {"policy": "autoaugment", "cutout": 16, "lr_schedule": "cosine"},
    "cifar-trivialaugment": {"policy": "trivialaugment", "cutout": 16, "lr_schedule": "cosine"},
    "cifar-sam": {"sam_rho": 0.05, "lr_schedule": "cosine"},
}
