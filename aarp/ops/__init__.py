"""What both daemons of the distribution (anytun-relay, aarp-responder) and their command lines
share to run as operators expect: systemd notification (sdnotify), the operations HTTP listener
(http) and the Prometheus text format (exposition), one log format (logfmt), capabilities
(caps), and --version / closed-pipe handling (cli). Imports nothing else of aarp, nor relay:
relay may import aarp, aarp never imports relay, so this is where both can reach it."""
