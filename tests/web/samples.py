"""Realistic messages for the web tests (and for the screenshots)."""

from __future__ import annotations

import base64
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

# A 2x2 PNG, so an image attachment is a real image.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFklEQVR42mNk+M9QzwAEjDAGNzYAAHEcA/2V"
    "EUaSAAAAAElFTkSuQmCC"
)
REPORT_CSV = b"quarter,revenue\nQ1,1200\nQ2,1850\nQ3,2410\n"


def _base(sender: str, to: str, subject: str, hours_ago: float, msgid: str) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC) - timedelta(hours=hours_ago))
    msg["Message-ID"] = f"<{msgid}@mail.example.org>"
    return msg


def newsletter(to: str) -> bytes:
    msg = _base("Northwind News <news@northwind.example>", to, "Your weekly digest: spring edition",
                30, "digest-1")
    msg.set_content("Spring is here. Read the digest in a browser that shows HTML.")
    msg.add_alternative(
        "<html><body><h2 style='color:#2f6fed'>Spring edition</h2>"
        "<p>Hello! Here is what happened this week.</p>"
        "<img src='http://tracker.northwind.example/pixel.gif?u=42' alt='tracker'>"
        "<ul><li>New trails opened</li><li>Community picnic on Sunday</li></ul>"
        "<script>document.title='pwned'</script>"
        "<p><a href='https://northwind.example/digest'>Read more</a></p></body></html>",
        subtype="html",
    )
    return msg.as_bytes()


def quarterly_report(to: str) -> bytes:
    msg = _base("Carol Finance <carol@finance.example>", to, "Quarterly report", 5, "report-1")
    msg.set_content("Hi,\n\nThe quarterly figures are attached (CSV and a chart).\n\nCarol\n")
    msg.add_attachment(REPORT_CSV, maintype="text", subtype="csv", filename="report.csv")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="chart.png")
    return msg.as_bytes()


def lunch(to: str) -> bytes:
    msg = _base("Dave Lee <dave@friends.example>", to, "Lunch on Friday?", 3, "lunch-1")
    msg.set_content("Shall we try the new noodle place on Friday at noon?\n\nDave\n")
    return msg.as_bytes()


def lunch_reply(to: str) -> bytes:
    msg = _base("Erin Moss <erin@friends.example>", to, "Re: Lunch on Friday?", 2, "lunch-2")
    msg["In-Reply-To"] = "<lunch-1@mail.example.org>"
    msg.set_content("Count me in! Noon works.\n\n> Shall we try the new noodle place?\n")
    return msg.as_bytes()


def invoice(to: str) -> bytes:
    msg = _base("Billing <billing@hosting.example>", to, "Invoice #2024-117 is available",
                50, "invoice-1")
    msg.set_content("Your invoice for this month is available in your account.\n")
    return msg.as_bytes()


def simple(to: str, subject: str, body: str, sender: str = "someone@remote.example") -> bytes:
    msg = _base(sender, to, subject, 0.1, f"m{abs(hash((subject, body)))}")
    msg.set_content(body)
    return msg.as_bytes()


ALL = (newsletter, invoice, quarterly_report, lunch, lunch_reply)
