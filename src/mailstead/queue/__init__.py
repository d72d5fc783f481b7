"""Outbound delivery: the queue workers, MX routing, the SMTP client, DSNs and recall."""
