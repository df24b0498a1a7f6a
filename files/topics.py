"""Topics the files context publishes."""

from __future__ import annotations

from enum import StrEnum


class FilesTopics(StrEnum):
    FILE_STORED = "files.file-stored"
    USER_FILES_PURGED = "files.user-files-purged"
