"""``mailstead monitor``: the MailService monitoring server.

Every mailstead node sends its usage statistics over UDP (``[metrics] monitor``); the monitor
receives them, keeps counts per server, per address and per protocol over sliding windows, and
shows them live in the terminal and as JSON and Prometheus text over HTTP.
"""
