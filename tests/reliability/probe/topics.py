from enum import StrEnum


class ReliabilityTopics(StrEnum):
    LOAD_APPLIED = "reliability.load-applied"
    # Declared by no event class in any process: a message "from a newer deployment".
    FROM_THE_FUTURE = "reliability.from-the-future"
