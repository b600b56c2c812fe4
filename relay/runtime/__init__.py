"""What every mode of the daemon stands on: the Service protocol and the loop that runs services
(daemon), the process around it (daemonizing, pid file, privileges), log targets, the control
socket, and the one root of relay's exceptions (errors). Imports nothing else of relay."""
