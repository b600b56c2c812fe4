"""Anycast announcements driven by health: the node's prefixes are announced to its routers
while the node is healthy and withdrawn when it is not, or while it drains.

    dampen.py   Health, Dampener: rise/fall dampening of check results (pure)
    checks.py   health sources: anytun-relay's control socket, HTTP /health, a command, a
                maintenance file
    exabgp.py   ExaBGP's text API (pure line builders) and the check loop ExaBGP runs
    cli.py      `anytun-relay exabgp`: the process for ExaBGP's `process` section
"""
