"""Mail authentication: SPF, DKIM, DMARC, ARC, Authentication-Results, MTA-STS."""
