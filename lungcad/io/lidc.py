"""LIDC-IDRI XML reads (``LidcReadMessage``) and their consensus across readers.

An LIDC XML file holds up to four ``readingSession`` elements, one per radiologist.  Each has

* ``unblindedReadNodule`` with ``characteristics`` and ``roi`` contours: a nodule >= 3 mm;
* ``unblindedReadNodule`` without characteristics, marked by one point: a nodule < 3 mm;
* ``nonNodule`` with one ``locus`` point: a finding that is not a nodule.

Contour points are pixel indices (``xCoord`` = column, ``yCoord`` = row) on the slice at
``imageZposition``.  Turning them into world millimetres needs the in-plane geometry of the
series (origin, pixel spacing, direction), taken from a :class:`CTVolume` or from the DICOM
headers of the series folder.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lungcad.errors import InputError
from lungcad.volume import CTVolume

if TYPE_CHECKING:  # pandas is imported when a table is made, to keep `lungcad info` quick
    import pandas as pd

__all__ = ["read_lidc_xml", "lidc_consensus", "CHARACTERISTICS", "READ_COLUMNS",
           "CONSENSUS_COLUMNS"]

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")
READ_COLUMNS = ["seriesuid", "reader", "radiologist_id", "nodule_id", "kind", "coordX", "coordY",
                "coordZ", "diameter_mm", "z_min", "z_max", "n_slices", "n_voxels", "volume_mm3",
                *CHARACTERISTICS]
CONSENSUS_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "n_readers",
                     "malignancy", "readers", "z_min", "z_max", "cluster_id"]

KIND_NODULE = "nodule>=3mm"
KIND_SMALL = "nodule<3mm"
KIND_NON_NODULE = "non-nodule"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element | None, name: str, default: str = "") -> str:
    c = None if el is None else _child(el, name)
    return default if c is None or c.text is None else c.text.strip()


def _geometry(geometry: CTVolume | str | os.PathLike) -> dict[str, Any]:
    """In-plane geometry: origin (x, y, z), direction, spacing (z, y, x), series uid."""
    if isinstance(geometry, CTVolume):
        return {"origin": np.asarray(geometry.origin, float),
                "direction": np.asarray(geometry.direction, float),
                "spacing": tuple(geometry.spacing), "series_uid": geometry.series_uid}
    from lungcad.io.discover import discover
    from lungcad.io.dicom_stack import plan_stack

    folder = Path(geometry)
    series = [s for s in discover(folder, errors=[]) if s.format != "itk" and s.headers]
    if not series:
        raise InputError(folder, "no DICOM series here to take the geometry of the LIDC reads from")
    s = max(series, key=lambda t: t.n_slices)
    plan = plan_stack([sl for h in s.headers for sl in h.slices], source=s.path)
    return {"origin": np.asarray(plan.origin, float), "direction": plan.direction,
            "spacing": plan.spacing, "series_uid": s.series_uid}


def _to_world(rows: np.ndarray, cols: np.ndarray, z: float, geo: dict) -> np.ndarray:
    """World (x, y, z) of pixels (row, col) on the axial slice at world z."""
    _, sy, sx = geo["spacing"]
    d = geo["direction"]
    xyz = (geo["origin"][None, :] + np.outer(np.asarray(cols, float) * sx, d[:, 0])
           + np.outer(np.asarray(rows, float) * sy, d[:, 1]))
    xyz[:, 2] = z
    return xyz


def _roi_pixels(points: np.ndarray) -> np.ndarray:
    """(row, col) of the pixels inside a closed contour, boundary included."""
    from skimage.draw import polygon

    rows, cols = points[:, 0], points[:, 1]
    r0, c0 = int(rows.min()), int(cols.min())
    shape = (int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1)
    mask = np.zeros(shape, dtype=bool)
    if len(points) >= 3:
        rr, cc = polygon(rows - r0, cols - c0, shape=shape)
        mask[rr, cc] = True
    mask[rows - r0, cols - c0] = True
    rr, cc = np.nonzero(mask)
    return np.column_stack([rr + r0, cc + c0])


def _max_diameter_mm(points: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """Largest distance between two points of one contour, in mm."""
    mm = points * np.asarray(spacing_yx, float)
    if len(mm) < 2:
        return 0.0
    diff = mm[:, None, :] - mm[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def _nodule_row(el: ET.Element, geo: dict, base: dict) -> dict:
    nodule_id = _text(el, "noduleID")
    chars = _child(el, "characteristics")
    rois = _children(el, "roi")
    ratings = {c: (float(_text(chars, c)) if _text(chars, c) else math.nan)
               for c in CHARACTERISTICS}
    has_chars = chars is not None and any(not math.isnan(v) for v in ratings.values())
    per_slice: dict[float, tuple[set, set]] = {}
    diam = 0.0
    n_points = 0
    _, sy, sx = geo["spacing"]
    for roi in rois:
        z = float(_text(roi, "imageZposition"))
        pts = np.array([[int(_text(e, "yCoord")), int(_text(e, "xCoord"))]
                        for e in _children(roi, "edgeMap")], dtype=int).reshape(-1, 2)
        if not len(pts):
            continue
        n_points += len(pts)
        inclusion = _text(roi, "inclusion", "TRUE").upper() != "FALSE"
        pix = {tuple(p) for p in _roi_pixels(pts).tolist()}
        inc, exc = per_slice.setdefault(round(z, 3), (set(), set()))
        (inc if inclusion else exc).update(pix)
        if inclusion:
            diam = max(diam, _max_diameter_mm(pts, (sy, sx)))
    kind = KIND_NODULE if has_chars and n_points > 1 else KIND_SMALL
    world = []
    for z, (inc, exc) in per_slice.items():
        pix = np.array(sorted(inc - exc), dtype=float).reshape(-1, 2)
        if len(pix):
            world.append(_to_world(pix[:, 0], pix[:, 1], z, geo))
    world = np.concatenate(world) if world else np.zeros((0, 3))
    zs = sorted(z for z, (inc, _) in per_slice.items() if inc)
    centre = world.mean(axis=0) if len(world) else (math.nan,) * 3
    return {**base, "nodule_id": nodule_id, "kind": kind,
            "coordX": float(centre[0]), "coordY": float(centre[1]), "coordZ": float(centre[2]),
            "diameter_mm": diam if kind == KIND_NODULE else math.nan,
            "z_min": zs[0] if zs else math.nan, "z_max": zs[-1] if zs else math.nan,
            "n_slices": len(zs), "n_voxels": len(world),
            "volume_mm3": len(world) * sy * sx * geo["spacing"][0],
            **(ratings if kind == KIND_NODULE else {c: math.nan for c in CHARACTERISTICS})}


def _non_nodule_row(el: ET.Element, geo: dict, base: dict) -> dict:
    z = float(_text(el, "imageZposition"))
    locus = _child(el, "locus")
    row, col = int(_text(locus, "yCoord")), int(_text(locus, "xCoord"))
    xyz = _to_world(np.array([row]), np.array([col]), z, geo)[0]
    return {**base, "nodule_id": _text(el, "nonNoduleID"), "kind": KIND_NON_NODULE,
            "coordX": float(xyz[0]), "coordY": float(xyz[1]), "coordZ": float(xyz[2]),
            "diameter_mm": math.nan, "z_min": z, "z_max": z, "n_slices": 1, "n_voxels": 1,
            "volume_mm3": math.nan, **{c: math.nan for c in CHARACTERISTICS}}


def read_lidc_xml(path: str | os.PathLike, geometry: CTVolume | str | os.PathLike
                  ) -> pd.DataFrame:
    """Read an LIDC-IDRI XML file into a table of reader marks.

    Parameters
    ----------
    path : the ``LidcReadMessage`` XML file
    geometry : the series it annotates, as a CTVolume or the DICOM series folder
        (only origin, pixel spacing and direction are used)

    Returns
    -------
    DataFrame with :data:`READ_COLUMNS`, one row per mark.  ``kind`` is ``"nodule>=3mm"``
    (contours and characteristics), ``"nodule<3mm"`` or ``"non-nodule"`` (one point).  For
    nodules >= 3 mm, the centre (world mm, LPS) is the mean position of every pixel inside the
    inclusion contours (polygon fill with its boundary, minus exclusion contours),
    ``diameter_mm`` the largest distance between two points of one contour, ``z_min/z_max``
    the extent of the contours, and the nine characteristic ratings (malignancy 1-5).
    ``reader`` is the index of the reading session in the file.

    Raises
    ------
    InputError
        The file is missing, not XML, or not an LIDC read message.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "LIDC XML file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(path, f"not valid XML ({e})") from e
    if _local(root.tag) != "LidcReadMessage":
        raise InputError(path, f"expected an LIDC XML file (root element LidcReadMessage). "
                         f"Received root element {_local(root.tag)}")
    geo = _geometry(geometry)
    header = _child(root, "ResponseHeader")
    series_uid = _text(header, "SeriesInstanceUid") or geo["series_uid"]
    rows = []
    try:
        for reader, session in enumerate(_children(root, "readingSession")):
            base = {"seriesuid": series_uid, "reader": reader,
                    "radiologist_id": _text(session, "servicingRadiologistID")}
            for el in _children(session, "unblindedReadNodule"):
                rows.append(_nodule_row(el, geo, base))
            for el in _children(session, "nonNodule"):
                rows.append(_non_nodule_row(el, geo, base))
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(path, f"malformed LIDC read ({type(e).__name__}: {e})") from e
    return pd.DataFrame(rows, columns=READ_COLUMNS)


def lidc_consensus(reads: pd.DataFrame, *, min_readers: int = 3) -> pd.DataFrame:
    """The nodules that at least ``min_readers`` readers marked as nodules >= 3 mm.

    Reads (``kind == "nodule>=3mm"``) are clustered by single linkage: two reads join when
    their centres are closer than max(5 mm, half the larger of their diameters).  Each reader
    counts once per cluster.  A cluster's centre, diameter and malignancy are the means over
    its reads.

    Returns
    -------
    DataFrame with :data:`CONSENSUS_COLUMNS` (world mm, LPS), sorted by series, then
    readers (most first), then coordZ.
    """
    import pandas as pd

    out = []
    nod = reads[reads["kind"] == KIND_NODULE].reset_index(drop=True)
    for series_uid, grp in nod.groupby("seriesuid", sort=True):
        xyz = grp[["coordX", "coordY", "coordZ"]].to_numpy(float)
        diam = grp["diameter_mm"].to_numpy(float)
        n = len(grp)
        parent = list(range(n))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(n):
            for j in range(i + 1, n):
                limit = max(5.0, 0.5 * max(diam[i], diam[j]))
                if np.linalg.norm(xyz[i] - xyz[j]) < limit:
                    parent[find(i)] = find(j)
        clusters: dict[int, list[int]] = {}
        for i in range(n):
            clusters.setdefault(find(i), []).append(i)
        for members in clusters.values():
            g = grp.iloc[members]
            readers = sorted(set(int(r) for r in g["reader"]))
            out.append({"seriesuid": series_uid,
                        "coordX": float(g["coordX"].mean()), "coordY": float(g["coordY"].mean()),
                        "coordZ": float(g["coordZ"].mean()),
                        "diameter_mm": float(g["diameter_mm"].mean()),
                        "n_readers": len(readers), "malignancy": float(g["malignancy"].mean()),
                        "readers": ";".join(str(r) for r in readers),
                        "z_min": float(g["z_min"].min()), "z_max": float(g["z_max"].max())})
    table = pd.DataFrame(out, columns=CONSENSUS_COLUMNS[:-1])
    table = table[table["n_readers"] >= min_readers]
    table = table.sort_values(["seriesuid", "n_readers", "coordZ"],
                              ascending=[True, False, True]).reset_index(drop=True)
    table["cluster_id"] = np.arange(1, len(table) + 1)
    return table[CONSENSUS_COLUMNS]
