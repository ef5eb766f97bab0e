"""The file-name rules in `protocol` that pair CT and label files: pure functions over names, shared by `train`,
`check-data`, `evaluate` and the training panel."""

from __future__ import annotations

from pathlib import Path

from liver_e2net import evaluation
from liver_e2net.protocol import pair_flat_folder, pair_nnunet, segment_role, split_case_name, volume_stem


def test_volume_stem_knows_volume_suffixes_and_leaves_other_files():
    assert [
        volume_stem(name) for name in ("a.nii.gz", "a.NII", "a.seg.nrrd", "a.nrrd", "a.mhd", "a.nhdr")
    ] == ["a"] * 6
    assert [volume_stem(name) for name in ("a.raw", "notes.txt", "._a.nii.gz", ".nii.gz")] == [None] * 4
    assert volume_stem(Path("/data/case 7.nii.gz")) == "case 7"


def test_split_case_name_reads_ct_and_label_words():
    assert split_case_name("case02_ct.nii.gz") == ("case02", "ct")
    assert split_case_name("case02_0000.nrrd") == ("case02", "ct")
    assert split_case_name("case02.image.mha") == ("case02", "ct")
    assert split_case_name("Case02_LABEL.nii.gz") == ("Case02", "label")
    assert split_case_name("case02-seg.nrrd") == ("case02", "label")
    assert split_case_name("liver_7_gt.nii") == ("liver_7", "label")
    assert split_case_name("case02_ct_label.nii.gz") == ("case02", "label")  # a label named after its CT file
    assert split_case_name("case02.seg.nrrd") == ("case02", "label")  # a segmentation is never a CT
    assert split_case_name("case02_ct.seg.nrrd") == ("case02", "label")
    assert split_case_name("case02.nii.gz") == ("case02", "")
    assert split_case_name("ct.nii.gz") == ("ct", "")  # a word alone is the name, not a mark
    assert split_case_name("segmentation.txt") is None


def test_flat_folder_pairs_by_case_and_an_unmarked_file_fills_the_missing_side():
    names = ["a_ct.nii.gz", "a_label.nii.gz", "b_0000.nii.gz", "b.nii.gz", "c.nii.gz", "c_seg.nrrd",
             "d_ct.nii.gz", "e_label.nii.gz", "f.nii.gz", "f.nrrd", "g_ct.nii.gz", "g_label.nii.gz", "g_mask.nii.gz",
             "lonely.nii.gz", "notes.txt"]  # fmt: skip
    pairs, unpaired = pair_flat_folder(Path("/data") / name for name in names)
    assert [(case, ct.name, label.name) for case, ct, label in pairs] == [
        ("a", "a_ct.nii.gz", "a_label.nii.gz"),
        ("b", "b_0000.nii.gz", "b.nii.gz"),
        ("c", "c.nii.gz", "c_seg.nrrd"),
    ]
    problems = {path.name: problem for path, problem in unpaired}
    assert sorted(problems) == ["d_ct.nii.gz", "e_label.nii.gz", "f.nii.gz", "f.nrrd", "g_ct.nii.gz",
                                "g_label.nii.gz", "g_mask.nii.gz", "lonely.nii.gz"]  # fmt: skip
    assert problems["d_ct.nii.gz"].startswith("no label file with the same case name")
    assert problems["lonely.nii.gz"].startswith("no label file with the same case name")
    assert problems["e_label.nii.gz"].startswith("no CT file with the same case name")
    assert problems["f.nrrd"].startswith("f.nii.gz, f.nrrd are all case 'f'")
    assert "g_ct.nii.gz, g_label.nii.gz, g_mask.nii.gz are all case 'g'" in problems["g_mask.nii.gz"]


def test_nnunet_layout_pairs_images_with_labels_of_the_same_name():
    images = [Path("imagesTr") / name for name in ("a_0000.nii.gz", "b.nrrd", "series7", "c_0000.nii.gz")]
    labels = [Path("labelsTr") / name for name in ("a.nii.gz", "b.seg.nrrd", "series7.nii.gz", "z.nii.gz")]
    pairs, unpaired = pair_nnunet(images, labels)
    assert [(case, image.name, label.name) for case, image, label in pairs] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"),
        ("b", "b.nrrd", "b.seg.nrrd"),
        ("series7", "series7", "series7.nii.gz"),  # a DICOM series folder
    ]
    assert [(path.name, problem.split(";")[0]) for path, problem in unpaired] == [
        ("c_0000.nii.gz", "no label c.ext in labelsTr/"),
        ("z.nii.gz", "no image z_0000.ext in imagesTr/"),
    ]


def test_segment_roles_and_evaluation_use_the_same_rules():
    assert [segment_role(n) for n in ("LIVER", "Liver tumour", "Lesion 2", "Portal vein", "Segment_1")] == [
        "liver", "tumor", "tumor", None, None]  # fmt: skip
    # `evaluate` reads a folder of label maps: there an unmarked name is a label map, a CT word marks a CT.
    assert evaluation.split_name(Path("case01.nii.gz")) == ("case01", "label")
    assert evaluation.split_name(Path("case01-image.nii.gz")) == ("case01", "ct")
    assert evaluation.split_name(Path("case01_mask.nrrd")) == ("case01", "label")
