"""lungcad.io.lidc: LIDC-IDRI XML reads and the consensus of the readers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungcad.errors import InputError
from lungcad.io import lidc_consensus, read_lidc_xml
from lungcad.volume import CTVolume

# A geometry: 0.5 mm pixels, origin (-100, -50, z), slices every 2 mm.
GEOM = CTVolume(np.zeros((2, 2, 2), np.int16), (2.0, 0.5, 0.5), (-100.0, -50.0, -200.0),
                series_uid="1.2.3.4")


def _roi(z: float, points, inclusion=True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
                    for x, y in points)
    return (f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>1.2</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def _square(x0, y0, n):
    """Closed outline of the pixel square [x0, x0+n] x [y0, y0+n] (columns x, rows y)."""
    pts = [(x, y0) for x in range(x0, x0 + n + 1)] + [(x0 + n, y) for y in range(y0, y0 + n + 1)]
    pts += [(x, y0 + n) for x in range(x0 + n, x0 - 1, -1)]
    pts += [(x0, y) for y in range(y0 + n, y0 - 1, -1)]
    return pts


def _nodule(nid, rois, malignancy):
    chars = "".join(f"<{c}>{v}</{c}>" for c, v in [
        ("subtlety", 4), ("internalStructure", 1), ("calcification", 6), ("sphericity", 4),
        ("margin", 4), ("lobulation", 1), ("spiculation", 1), ("texture", 5),
        ("malignancy", malignancy)])
    return (f"<unblindedReadNodule><noduleID>{nid}</noduleID>"
            f"<characteristics>{chars}</characteristics>{''.join(rois)}</unblindedReadNodule>")


def _session(rid, body):
    return (f"<readingSession><annotationVersion>3.12</annotationVersion>"
            f"<servicingRadiologistID>{rid}</servicingRadiologistID>{body}</readingSession>")


def _xml(sessions) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
            '<SeriesInstanceUid>1.2.3.4</SeriesInstanceUid></ResponseHeader>'
            + "".join(sessions) + "</LidcReadMessage>")


def test_synthetic_reads(tmp_path):
    # reader 0: a 21x21-pixel square (10 mm) on two slices, centre pixel (110, 60)
    sq = _square(100, 50, 20)
    r0 = _nodule("N1", [_roi(-180.0, sq), _roi(-178.0, sq)], 4)
    # plus a small nodule (one point) and a non-nodule
    r0 += ("<unblindedReadNodule><noduleID>S1</noduleID>"
           + _roi(-170.0, [(300, 200)]) + "</unblindedReadNodule>")
    r0 += ("<nonNodule><nonNoduleID>NN1</nonNoduleID><imageZposition>-160.0</imageZposition>"
           "<imageSOP_UID>1.3</imageSOP_UID><locus><xCoord>10</xCoord><yCoord>20</yCoord>"
           "</locus></nonNodule>")
    # reader 1: the same lesion shifted by 2 pixels (1 mm), with a hole (exclusion contour)
    r1 = _nodule("M1", [_roi(-180.0, _square(102, 50, 20)),
                        _roi(-180.0, _square(110, 58, 4), inclusion=False)], 2)
    # reader 2: something far away
    r2 = _nodule("K1", [_roi(-100.0, _square(300, 300, 10))], 1)
    path = tmp_path / "read.xml"
    path.write_text(_xml([_session("r0", r0), _session("r1", r1), _session("r2", r2)]))
    reads = read_lidc_xml(path, GEOM)
    assert list(reads["kind"]) == ["nodule>=3mm", "nodule<3mm", "non-nodule", "nodule>=3mm",
                                   "nodule>=3mm"]
    n1 = reads.iloc[0]
    # centre pixel (row 60, col 110) -> x = -100 + 110*0.5, y = -50 + 60*0.5; z midway
    assert (n1.coordX, n1.coordY, n1.coordZ) == pytest.approx((-45.0, -20.0, -179.0))
    assert n1.diameter_mm == pytest.approx(math.hypot(10, 10))  # the square's diagonal
    assert n1.n_voxels == 2 * 21 * 21 and n1.n_slices == 2
    assert (n1.z_min, n1.z_max) == (-180.0, -178.0)
    assert n1.volume_mm3 == pytest.approx(2 * 21 * 21 * 0.25 * 2.0)
    assert n1.malignancy == 4 and n1.texture == 5 and n1.seriesuid == "1.2.3.4"
    small, non = reads.iloc[1], reads.iloc[2]
    assert (small.coordX, small.coordY, small.coordZ) == pytest.approx((50.0, 50.0, -170.0))
    assert math.isnan(small.malignancy) and math.isnan(small.diameter_mm)
    assert (non.coordX, non.coordY, non.coordZ) == pytest.approx((-95.0, -40.0, -160.0))
    m1 = reads.iloc[3]
    assert m1.n_voxels == 21 * 21 - 5 * 5  # the 5x5 hole is excluded
    assert m1.coordX == pytest.approx(-44.0)  # symmetric hole: centre unchanged
    cons = lidc_consensus(reads, min_readers=2)
    assert len(cons) == 1
    c = cons.iloc[0]
    assert c.n_readers == 2 and c.readers == "0;1" and c.malignancy == pytest.approx(3.0)
    assert c.coordX == pytest.approx(-44.5) and c.coordZ == pytest.approx(-179.5)
    assert len(lidc_consensus(reads, min_readers=1)) == 2


def test_bad_xml(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_lidc_xml(tmp_path / "none.xml", GEOM)
    p = tmp_path / "broken.xml"
    p.write_text("<LidcReadMessage><readingSession>")
    with pytest.raises(InputError, match="not valid XML") as e:
        read_lidc_xml(p, GEOM)
    assert str(p) in str(e.value)
    q = tmp_path / "voc.xml"
    q.write_text("<annotation><object><name>A</name></object></annotation>")
    with pytest.raises(InputError, match="LidcReadMessage"):
        read_lidc_xml(q, GEOM)


# ------------------------------------------------------------------------------ real reads

@pytest.fixture(scope="module")
def lidc_reads(lidc_dir):
    (xml,) = sorted(lidc_dir.glob("LIDC-IDRI-0003/*/*/*.xml"))
    return read_lidc_xml(xml, xml.parent)  # geometry from the DICOM headers of the folder


@pytest.mark.real
def test_lidc_reads_match_reference(lidc_dir, lidc_reads):
    ref = pd.read_csv(lidc_dir / "annotations_reads.csv")
    assert (lidc_reads["kind"] == "nodule>=3mm").sum() == 13
    assert (lidc_reads["kind"] == "non-nodule").sum() == 38
    assert sorted(lidc_reads["reader"].unique()) == [0, 1, 2, 3]
    merged = ref.merge(lidc_reads, left_on=["reader_index", "nodule_id"],
                       right_on=["reader", "nodule_id"], how="inner")
    assert len(merged) == 51
    for axis in "xyz":
        err = np.abs(merged[f"{axis}_mm"] - merged[f"coord{axis.upper()}"])
        assert err.max() < 0.01, axis
    nod = merged[merged["kind_x"] == "nodule>=3mm"]
    assert np.abs(nod["max_axial_diam_mm"] - nod["diameter_mm"]).max() < 0.01
    assert (nod["malignancy_x"] == nod["malignancy_y"]).all()
    assert (nod["n_slices_x"] == nod["n_slices_y"]).all()


@pytest.mark.real
def test_lidc_consensus_matches_reference(lidc_dir, lidc_reads):
    ref = pd.read_csv(lidc_dir / "annotations_consensus.csv")
    cons = lidc_consensus(lidc_reads, min_readers=3)
    assert len(cons) == 3
    assert (cons["n_readers"] == 4).all()
    for _, r in ref[ref["n_readers"] >= 3].iterrows():
        d = np.hypot(np.hypot(cons.coordX - r.x_mm, cons.coordY - r.y_mm), cons.coordZ - r.z_mm)
        c = cons.iloc[int(np.argmin(d))]
        assert d.min() < 1.5
        assert abs(c.diameter_mm - r.mean_max_axial_diam_mm) < 0.15 * r.mean_max_axial_diam_mm
        ratings = [float(v) for v in str(r.malignancy_ratings).split(";")]
        assert c.malignancy == pytest.approx(np.mean(ratings))
    all_ = lidc_consensus(lidc_reads, min_readers=1)
    assert sorted(all_["n_readers"]) == [1, 4, 4, 4]
