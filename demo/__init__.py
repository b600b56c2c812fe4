"""`make demo`: the anycast lab demo (not part of the installed package)."""
