"""Relay mode: an rtpproxy-protocol media relay that SIP proxies (Kamailio, OpenSIPS) drive.

    protocol.py  commands and replies as values (pure parser/formatter, cookies, E<n> errors)
    sessions.py  the session table: plain records, change notifications, latching rules, GC
    ports.py     the even/odd port-pair allocator behind a small interface
    commands.py  what each command does to the table (pure, given a port source)
    media.py     the forwarding IO: relay sockets, batched receive, counters
    fastmedia.py the same on C worker threads (relay/fastpath/rtp.c), the default when built
    server.py    UDP/UDP6/Unix-stream control servers and the daemon service
    cli.py       anytun-relay options (--rtpproxy, --rtp-address, --rtp-ports, ...) into
                 a RelayConfig
"""
