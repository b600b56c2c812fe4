"""Anycast lab built from network namespaces, for tests, benchmarks and the demo."""

from lab.netns import Host, LabError, Namespaces, sh, stop_process, sweep_stale
from lab.topology import AA4, AA6, AK6, ANYCAST_PREFIXES, AnycastLab, Node

__all__ = ["AA4", "AA6", "AK6", "ANYCAST_PREFIXES", "AnycastLab", "Host", "LabError",
           "Namespaces", "Node", "sh", "stop_process", "sweep_stale"]
