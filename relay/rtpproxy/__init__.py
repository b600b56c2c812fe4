"""Relay mode: a media relay that SIP proxies (Kamailio, OpenSIPS) drive through the rtpproxy
protocol or rtpengine's ng protocol.

    protocol.py  commands and replies as values (pure parser/formatter, cookies, E<n> errors)
    sessions.py  the session table: plain records, change notifications, latching rules, GC
    ports.py     the even/odd port-pair allocator behind a small interface
    commands.py  what each command does to the table (pure, given a port source)
    bencode.py   the ng protocol's bencode codec (pure, strict, bounded)
    sdp.py       SDP parsing and rewriting for the relay (pure)
    ng.py        the ng protocol's commands on the same table and controller (pure)
    recording.py pcap files of recorded calls, following the table
    media.py     the forwarding IO: relay sockets, batched receive, counters
    fastmedia.py the same on C worker threads (relay/fastpath/rtp.c), the default when built
    server.py    UDP/UDP6/Unix-stream control servers (rtpproxy, ng) and the daemon service
    cli.py       anytun-relay options (--rtpproxy, --listen-ng, --rtp-address, ...) into
                 a RelayConfig
"""
