from enum import StrEnum


class ProbeTopics(StrEnum):
    PROBE_HAPPENED = "probe.probe-happened"
    CHAIN_LINKED = "probe.chain-linked"
    LONELY_HAPPENED = "probe.lonely-happened"
    STAMPED = "probe.stamped"
    COMMIT_CHAINED = "probe.commit-chained"
    # Flow control: one topic per group under test.
    PACED_SLOW = "probe.paced-slow"
    PACED_FAST = "probe.paced-fast"
    LIMITED = "probe.limited"
    RATED = "probe.rated"
    PAUSABLE = "probe.pausable"
    # Ordering: a keyed step, subscribed by two groups.
    STEPPED = "probe.stepped"
