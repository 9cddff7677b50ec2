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
  cifar100-kd  RepDistiller's CIFAR-100 recipe (Tian et al. 2020, CRD; its train_student.py
           and train_teacher.py): 240 epochs, SGD momentum 0.9 (no Nesterov, no reset at the
           drops) lr 0.05 x0.1 at 150/180/210, weight decay 5e-4, batch 64, flip + crop; with
           --teacher, Hinton's loss at T = 4 weighted 0.9 against 0.1 of the labels' (its
           `-r 0.1 -a 0.9`). Without --teacher it trains the teachers and the plain students.
           Departure: our mean/std (the paper's CIFAR-10 numbers) where RepDistiller
           normalises with CIFAR-100's own.
  imagenet  the paper's ImageNet recipe, fb.resnet.torch's (datasets/imagenet.lua,
           transforms.lua, train.lua): random-sized crop 224 (8-100% of the area, aspect
           3/4-4/3, bicubic), flip, colour jitter 0.4 and PCA lighting 0.1, ImageNet mean/std;
           test: shorter side 256, centre crop 224; SGD Nesterov 0.9, lr 0.1 for batch 256
           (scaled linearly with the batch), /10 at epochs 31 and 61, 90 epochs, weight decay
           1e-4 on every parameter, momentum kept across the drops (its optimiser is never
           rebuilt).
  imagenet-modern  as much of torchvision's recipe for wide_resnet50_2 (IMAGENET1K_V2, 81.6%
           top-1) as these options cover: 600 epochs, SGD 0.9 lr 0.5 for batch 1024, cosine
           with 5 warm-up epochs, weight decay 2e-5, label smoothing 0.1, mixup 0.2, CutMix
           1.0, TrivialAugment (wide), RandomResizedCrop 176, test 232 -> 224, weight EMA
           (torchvision's 0.99998 every 32 steps of batch 1024, about 0.99997 every step). Not
           covered: random erasing 0.1, no weight decay on batch norm, the repeated-augment
           sampler; README "ImageNet" says which part is which.
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
    "cifar100-kd": {
        "dataset": "cifar100",
        "model": "wrn-16-2",
        "epochs": 240,
        "lr": 0.05,
        "milestones": (150, 180, 210),
        "lr_decay": 0.1,
        "weight_decay": 5e-4,
        "batch_size": 64,
        "nesterov": False,
        "reset_momentum": False,
        "kd_temperature": 4.0,
        "kd_alpha": 0.9,
    },
    "imagenet": {
        "model": "wrn-50-2",
        "dataset": "imagenet",
        "test_split": "val",
        "crop": "random-sized",
        "crop_size": 224,
        "eval_resize": 256,
        "eval_crop": 224,
        "color_jitter": 0.4,
        "lighting": 0.1,
        "preprocess": "imagenet",
        "epochs": 90,
        "milestones": (31, 61),
        "lr_decay": 0.1,
        "lr": 0.1,
        "lr_batch": 256,
        "batch_size": 256,
        "weight_decay": 1e-4,
        "reset_momentum": False,
        "eval_batch_size": 100,
    },
    "imagenet-modern": {
        "model": "wrn-50-2",
        "dataset": "imagenet",
        "test_split": "val",
        "crop": "random-resized",
        "crop_size": 176,
        "eval_resize": 232,
        "eval_crop": 224,
        "policy": "trivialaugment",
        "preprocess": "imagenet",
        "epochs": 600,
        "lr_schedule": "cosine",
        "warmup_epochs": 5,
        "lr": 0.5,
        "lr_batch": 1024,
        "batch_size": 1024,
        "nesterov": False,
        "weight_decay": 2e-5,
        "label_smoothing": 0.1,
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
        "ema_decay": 0.99997,
        "eval_batch_size": 100,
    },
}
