"""Write a PNG montage of hard negatives mined from real backgrounds, for a person to look at.

    python benchmarks/negatives_montage.py ../shared/data/real/backgrounds montage.png [--n 48]

Each tile is a 48 mm axial crop centred on one mined point (cross), labelled in the printed
table by its kind.  A scan without reads is unknown: check that none looks like a nodule.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    from lungcad.io import discover, load_series
    from lungcad.lungmask import segment_lungs
    from lungcad.synthetic.background_negatives import mine_background_negatives, montage
    from lungcad.synthetic.exclusions import exclusions_for
    from lungcad.train.sources.backgrounds import background_exclusions

    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=48, help="negatives per scan")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    table = background_exclusions(a.root)
    tiles, rows = [], []
    for s in discover(a.root, errors=[]):
        if not s.usable:
            continue
        vol = load_series(s)
        lung = segment_lungs(vol.hu, spacing_zyx=vol.spacing, direction=vol.direction).mask
        ex = exclusions_for(table, series_uid=s.series_uid, names=[Path(s.path).name])
        neg = mine_background_negatives(vol, lung, rng=np.random.default_rng(a.seed), n=a.n, exclude_xyz_mm=ex)
        tiles.append(montage(vol, neg, cols=8))
        rows.append(neg.assign(scan=Path(s.path).name))
    from PIL import Image

    width = max(t.shape[1] for t in tiles)
    img = np.concatenate([np.pad(t, ((0, 8), (0, width - t.shape[1]))) for t in tiles])
    Image.fromarray(img).save(a.out)
    table = pd.concat(rows, ignore_index=True)
    with pd.option_context("display.max_rows", 500, "display.width", 160):
        print(table[["scan", "kind", "coordX", "coordY", "coordZ", "score"]].round(1))
    print(f"wrote {a.out}: {len(table)} tiles, 8 per row, scans in the order above")


if __name__ == "__main__":
    main()
