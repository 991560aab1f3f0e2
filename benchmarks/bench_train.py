"""Time the training data pipelines and one training step of each shipped network.

* a batch of 16 segmenter tiles (128 x 128 x 3), of 32 FPR cubes (32^3) and of 32 FPR
  orthogonal views (32 x 32 x 3), with augmentation, from one phantom (1 mm pixels, 2.5 mm
  slices) prepared once;
* one optimizer step of the U-Net (depth 4, 16 filters, batch 16) and of the two FPR
  networks (WRN-3D-10-1 on cubes, WRN-2D-16-2 on views; batch 32), as ``lungcad train`` runs them.

The ratio of data time to step time says whether more ``--workers`` would help.
"""
from __future__ import annotations


from _util import median_time, peak_rss_mb


def main(repeats: int = 3) -> list[dict]:
    import keras

    from lungcad.fpr import build_fpr_model
    from lungcad.train import FPRDataset, SegmenterDataset, synthetic_cases
    from lungcad.train.fit_segmenter import build_segmenter
    from lungcad.train.losses import LesionLoss, dice

    case = synthetic_cases(1, seed=4243, slice_mm=2.5)[0].load()
    seg_ds = SegmenterDataset([case], tile=128, batch_size=16, steps=1000, seed=0)
    fpr_ds = FPRDataset([case], batch_size=32, steps=1000, seed=0)
    counter = iter(range(10 ** 6))
    rows = [
        {"name": "segmenter batch (16 tiles, augmented)",
         "median_s": median_time(lambda: seg_ds[next(counter) % 1000], repeats)[0]},
        {"name": "FPR batch (32 cubes, augmented)",
         "median_s": median_time(lambda: fpr_ds[next(counter) % 1000], repeats)[0]},
    ]
    seg = build_segmenter(context_slices=1)
    seg.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LesionLoss(), metrics=[dice])
    x, y = seg_ds[0]
    rows.append({"name": "U-Net d4/16 train step (batch 16)",
                 "median_s": median_time(lambda: seg.train_on_batch(x, y), repeats)[0]})
    fpr = build_fpr_model(backbone="wrn3d", backbone_kwargs={"depth": 10, "width": 1, "dropout": 0.0})
    fpr.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss={"nodule": "binary_crossentropy", "malignancy": "binary_crossentropy"})
    xi, yi, wi = fpr_ds[0]
    rows.append({"name": "WRN-3D-10-1 train step (batch 32 cubes)",
                 "median_s": median_time(lambda: fpr.train_on_batch(xi, yi, sample_weight=wi), repeats)[0]})
    # the shipped FPR: WRN-16-2 in 2-D on orthogonal views
    views_ds = FPRDataset([case], batch_size=32, steps=1000, seed=0, views="orthogonal")
    rows.append({"name": "FPR batch (32 orthogonal views, augmented)",
                 "median_s": median_time(lambda: views_ds[next(counter) % 1000], repeats)[0]})
    fpr2d = build_fpr_model(backbone="wrn2d", backbone_kwargs={"depth": 16, "width": 2, "dropout": 0.0})
    fpr2d.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={"nodule": "binary_crossentropy", "malignancy": "binary_crossentropy"})
    xv, yv, wv = views_ds[0]
    rows.append({"name": "WRN-2D-16-2 train step (batch 32 views)",
                 "median_s": median_time(lambda: fpr2d.train_on_batch(xv, yv, sample_weight=wv), repeats)[0],
                 "peak_rss_mb": round(peak_rss_mb())})
    return rows
