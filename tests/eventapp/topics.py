from enum import StrEnum


class ProbeTopics(StrEnum):
    PROBE_HAPPENED = "probe.probe-happened"
    CHAIN_LINKED = "probe.chain-linked"
    LONELY_HAPPENED = "probe.lonely-happened"
    STAMPED = "probe.stamped"
    COMMIT_CHAINED = "probe.commit-chained"
