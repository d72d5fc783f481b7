"""The web face of mailstead: webmail, account settings, sign-up, admin console and JSON API.

A Starlette app rendered with Jinja2 templates, served by uvicorn inside mailstead's own
asyncio loop (``server.py``). It uses the same services as IMAP and SMTP (store, mailbox,
delivery, accounts), never a protocol over a socket.
"""
