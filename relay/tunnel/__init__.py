"""The SATP tunnel, one package for one peer or many, layered inside:

    pure     table (connections, routes, MACs, change events), routes (LPM), packet (inner
             packets, ICMP errors), dataplane (the per-packet work in batches), settings,
             nodefile (the TOML file), controld's dump handling
    IO       device (TUN/TAP), tundev (offload re-attach), seqstore (--seq-file), endpoint
             (device + transports + data plane on asyncio), fastplane (the C engine behind
             the endpoint), kernel (routes, open tunnel mode's NAT), controld (-X client),
             aarp_answers
    assembly peer (one connection), server (many clients), node (what both hand up)
    cli      the command line into settings: the only module that sees argparse
"""
