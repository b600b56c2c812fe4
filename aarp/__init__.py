"""Anycast address resolving (AARP): find the unicast address behind an anycast address."""

__version__ = "0.1.0"
