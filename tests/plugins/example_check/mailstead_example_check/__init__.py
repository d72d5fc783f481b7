"""An example mailstead check: refuses a message whose Subject holds a word (``[checks.
no_lottery] word``, default "lottery") with ``[checks.no_lottery] code`` (default 550), and
stamps the others with a header field."""

from __future__ import annotations

from email.parser import BytesHeaderParser

from mailstead.checks import Check, CheckContext, CheckSetup, HookResult, add_header, reject


class NoLottery(Check):
    name = "no_lottery"

    def __init__(self, setup: CheckSetup) -> None:
        self.word = str(setup.options.get("word", "lottery")).lower()
        self.code = int(setup.options.get("code", 550))
        self.log = setup.log

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        subject = str(BytesHeaderParser().parsebytes(message).get("Subject", ""))
        if self.word in subject.lower():
            self.log("refused", client=ctx.client_ip, session=ctx.session_id)
            return reject(self.code, "5.7.0", f"no {self.word} mail here (example plug-in)")
        return add_header("X-Example-Check", "passed")


def make_check(setup: CheckSetup) -> NoLottery:
    return NoLottery(setup)
