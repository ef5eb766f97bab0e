"""CLI subcommands: each module has register(subparsers) that sets func=run."""


def add_data_arguments(group) -> None:
    """--data and --case as `train`, `train-fp-filter` and `check-data` take them (read by sources.given_cases)."""
    group.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DIR_OR_JSON",
        help="folder with imagesTr/ + labelsTr/ or NAME_ct + NAME_label files, or a JSON list of "
        '{"image": ..., "label": ...}; repeatable',
    )
    group.add_argument(
        "--case",
        action="append",
        default=[],
        nargs=2,
        metavar=("CT", "LABEL"),
        help="one CT (file or DICOM folder) and its label map or .seg.nrrd; repeatable",
    )
