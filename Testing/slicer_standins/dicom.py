"""Stand-in for Slicer's DICOM database (`slicer.dicomDatabase`, a ctkDICOMDatabase): the queries the module makes
(patients -> studies -> series -> files, names, descriptions, study fields), answered from the headers of a list
of DICOM files read with pydicom. Test-only; patient ids stand for ctk's internal patient keys."""

from __future__ import annotations

from collections import defaultdict


class DICOMDatabase:
    def __init__(self, files) -> None:
        import pydicom

        self._patientNames: dict[str, str] = {}
        self._studies: dict[str, list[str]] = defaultdict(list)  # patient -> study UIDs
        self._studyFields: dict[str, dict[str, str]] = {}
        self._series: dict[str, list[str]] = defaultdict(list)  # study -> series UIDs
        self._files: dict[str, list[str]] = defaultdict(list)  # series -> files
        for path in sorted(str(file) for file in files):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            patient, study, series = header.PatientID, header.StudyInstanceUID, header.SeriesInstanceUID
            self._patientNames[patient] = str(header.get("PatientName", ""))
            if study not in self._studies[patient]:
                self._studies[patient].append(study)
                self._studyFields[study] = {
                    "StudyDate": str(header.get("StudyDate", "")),
                    "StudyDescription": str(header.get("StudyDescription", "")),
                }
            if series not in self._series[study]:
                self._series[study].append(series)
            self._files[series].append(path)

    def patients(self) -> list[str]:
        return list(self._patientNames)

    def nameForPatient(self, patient: str) -> str:
        return self._patientNames.get(patient, "")

    def studiesForPatient(self, patient: str) -> list[str]:
        return list(self._studies.get(patient, []))

    def descriptionForStudy(self, study: str) -> str:
        return self._studyFields.get(study, {}).get("StudyDescription", "")

    def fieldForStudy(self, field: str, study: str) -> str:
        return self._studyFields.get(study, {}).get(field, "")

    def seriesForStudy(self, study: str) -> list[str]:
        return list(self._series.get(study, []))

    def filesForSeries(self, series: str, hits: int = -1) -> list[str]:
        files = self._files.get(series, [])
        return list(files if hits < 0 else files[:hits])
