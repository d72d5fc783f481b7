"""The terminal mail client (Textual): folders on the left, the folder's messages above, the
message below. Works with any IMAP server and SMTP submission server (connection.py).

Keys: Enter reads, c composes, r replies, f flags, d deletes (to Trash), j marks as spam
(to Junk), n as not spam (back to INBOX), m moves to another folder, s saves the message
or an attachment to a file, / searches the folder on the server (Escape goes back to the
whole folder), t switches between the list by date and the conversations (the server's
THREAD=REFERENCES), R recalls a sent message still waiting in mailstead's queue (through its
web API: --web-url, or the local server's http listener) and shows each recipient's outcome,
g refreshes, q quits. The first column holds marks (marks.py). In the
compose screen, Ctrl+S sends and Escape cancels. Every server call runs in a worker thread,
one at a time, so the screen never freezes on the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from imapclient.exceptions import IMAPClientError
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from mailstead.client.connection import ClientError, Letter, MailClient, Summary
from mailstead.client.marks import INTEGRITY_WORDS, LEGEND, marks
from mailstead.client.saving import default_folder, saveables
from mailstead.client.screens import FolderPickerScreen, SaveScreen, SearchScreen
from mailstead.client.webapi import WebApi

T = TypeVar("T")


class ComposeScreen(ModalScreen[dict[str, str] | None]):
    """To, Cc, Subject, attachments (paths, comma-separated) and the text; dismissed with
    what was written, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "send", "Send"), Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ComposeScreen { align: center middle; }
    #compose { width: 90%; height: 90%; border: round $accent; padding: 0 1; }
    #compose TextArea { height: 1fr; }
    #compose Horizontal { height: auto; }
    """

    def __init__(self, to: str = "", subject: str = "", body: str = "") -> None:
        super().__init__()
        self.initial = {"to": to, "subject": subject, "body": body}

    def compose(self) -> ComposeResult:
        with Vertical(id="compose"):
            yield Input(self.initial["to"], placeholder="To", id="to")
            yield Input(placeholder="Cc", id="cc")
            yield Input(self.initial["subject"], placeholder="Subject", id="subject")
            yield Input(placeholder="Attach files (paths, comma-separated)", id="attach")
            yield TextArea(self.initial["body"], id="body")
            with Horizontal():
                yield Button("Send (Ctrl+S)", id="send", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#body" if self.initial["to"] else "#to").focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            self.action_send()
        else:
            self.action_cancel()

    def action_send(self) -> None:
        fields = {name: self.query_one(f"#{name}", Input).value
                  for name in ("to", "cc", "subject", "attach")}
        fields["body"] = self.query_one("#body", TextArea).text
        self.dismiss(fields)

    def action_cancel(self) -> None:
        self.dismiss(None)


class MailApp(App[None]):
    TITLE = "mailstead"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "compose", "Compose"), Binding("r", "reply", "Reply"),
        Binding("f", "flag", "Flag"), Binding("d", "delete", "Delete"),
        Binding("j", "junk", "Spam"), Binding("n", "not_junk", "Not spam"),
        Binding("t", "threads", "Threads"), Binding("g", "refresh", "Refresh"),
        Binding("m", "move", "Move"), Binding("s", "save", "Save"),
        Binding("R", "recall", "Recall", key_display="R"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("escape", "end_search", "All messages"),
        Binding("q", "quit", "Quit"),
    ]
    DEFAULT_CSS = """
    #folders { width: 26; border-right: solid $primary; }
    #messages { height: 45%; }
    #reader { height: 1fr; border-top: solid $primary; padding: 0 1; }
    #status { height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self, client: MailClient, save_folder: Path | None = None) -> None:
        super().__init__()
        self.client = client
        self.save_folder = save_folder  # where "save" suggests files; None: default_folder()
        self.search_query: str | None = None  # the list shows what it found, when set
        self.folder = "INBOX"
        self.summaries: list[Summary] = []
        self.letter: Letter | None = None
        self.threaded = False  # conversations (UID THREAD REFERENCES) instead of by date
        web_url = client.settings.web_url
        self.web = WebApi(client.settings, web_url) if web_url else None  # for recall
        self._lock = asyncio.Lock()

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield OptionList(id="folders")
            with Vertical():
                table: DataTable[str] = DataTable(id="messages", cursor_type="row")
                yield table
                with VerticalScroll(id="reader"):
                    yield Static("", id="letter", markup=False)
        yield Label("", id="status")
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one("#messages", DataTable)
        table.add_columns("", "From", "Subject", "Date")
        await self.load_folders()
        await self.load_messages()
        table.focus()

    async def on_unmount(self) -> None:
        """Logs out when the client quits (the server need not wait for a timeout)."""
        async with self._lock:
            await asyncio.to_thread(self.client.close)
            if self.web is not None:
                await asyncio.to_thread(self.web.close)

    # -- talking to the server --

    async def call(self, func: Callable[..., T], *args: Any) -> T | None:
        """``func(*args)`` in a worker thread; a failure is shown on the status line."""
        async with self._lock:
            try:
                return await asyncio.to_thread(func, *args)
            except (ClientError, IMAPClientError, OSError) as exc:
                self.status(f"error: {exc}")
                return None

    def status(self, text: str) -> None:
        self.query_one("#status", Label).update(text)

    async def load_folders(self) -> None:
        folders = await self.call(self.client.folders) or []
        menu = self.query_one("#folders", OptionList)
        menu.clear_options()
        menu.add_options([Option(f.name, id=f.name) for f in folders])
        names = [f.name for f in folders]
        if self.folder in names:
            menu.highlighted = names.index(self.folder)

    async def load_messages(self) -> None:
        found: list[Summary] | None
        if self.search_query is not None:
            found = await self.call(self.client.search, self.folder, self.search_query)
        else:
            found = await self.call(self.client.summaries, self.folder, 500, self.threaded)
        self.summaries = found or []
        table = self.query_one("#messages", DataTable)
        table.clear()
        for s in self.summaries:
            mark = marks(s)
            when = s.date.strftime("%Y-%m-%d %H:%M") if s.date else ""
            subject = ("  " * min(s.depth - 1, 10) + "└ " if s.depth else "") + s.subject
            table.add_row(mark, s.sender[:30], subject[:80], when, key=str(s.uid))
        if found is not None and self.search_query is not None:
            self.status(f"{self.folder}: {len(self.summaries)} found for "
                        f"\"{self.search_query}\" (Escape: the whole folder)")
        elif found is not None:
            shown = "conversations" if self.threaded else "by date"
            self.status(f"{self.folder}: {len(self.summaries)} messages, {shown}  ({LEGEND})")

    def current(self) -> Summary | None:
        table = self.query_one("#messages", DataTable)
        if not self.summaries or table.cursor_row is None:
            return None
        if 0 <= table.cursor_row < len(self.summaries):
            return self.summaries[table.cursor_row]
        return None

    # -- events --

    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.folder = str(event.option.id)
        self.search_query = None
        self.letter = None
        self.query_one("#letter", Static).update("")
        await self.load_messages()
        self.query_one("#messages", DataTable).focus()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        summary = self.current()
        if summary is None:
            return
        letter = await self.call(self.client.read, self.folder, summary.uid)
        if letter is None:
            return
        self.letter = letter
        lines = [f"From:    {letter.header('From')}", f"To:      {letter.header('To')}"]
        if letter.header("Cc"):
            lines.append(f"Cc:      {letter.header('Cc')}")
        lines += [f"Date:    {letter.header('Date')}", f"Subject: {letter.header('Subject')}"]
        spam = letter.header("X-Spam-Status")
        if spam:
            lines.append(f"Spam:    {spam}")
        if letter.integrity is not None:
            lines.append(f"Integrity: {INTEGRITY_WORDS[letter.integrity]}")
        if letter.attachments:
            lines.append("Attached: " + ", ".join(letter.attachments))
        self.query_one("#letter", Static).update("\n".join(lines) + "\n\n" + letter.text)
        self.status(f"{self.folder}: message {summary.uid}")

    # -- actions --

    def action_compose(self) -> None:
        self.push_screen(ComposeScreen(), self._send)

    def action_reply(self) -> None:
        letter = self.letter
        if letter is None:
            self.status("open a message first (Enter)")
            return
        subject = letter.header("Subject")
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"
        quoted = "".join(f"> {line}\n" for line in letter.text.splitlines())
        to = letter.header("Reply-To") or letter.header("From")
        self.push_screen(ComposeScreen(to, subject, f"\n\n{letter.header('From')} wrote:\n"
                                       f"{quoted}"), lambda fields: self._send(fields, letter))

    async def _send(self, fields: dict[str, str] | None, reply_to: Letter | None = None) -> None:
        if fields is None:
            self.status("not sent")
            return
        attachments = [Path(p.strip()).expanduser() for p in fields["attach"].split(",")
                       if p.strip()]
        missing = [str(p) for p in attachments if not p.is_file()]
        if missing:
            self.status(f"error: no such file: {', '.join(missing)}")
            return
        message = self.client.compose(fields["to"], fields["subject"], fields["body"],
                                      cc=fields["cc"], attachments=attachments,
                                      reply_to=reply_to)
        self.status("sending...")
        sent_to = await self.call(self.client.send, message)
        if sent_to is not None:
            self.status(f"sent to {', '.join(sent_to)}")

    async def _change(self, what: str, func: Callable[..., Any], *args: Any) -> None:
        summary = self.current()
        if summary is None:
            return
        await self.call(func, self.folder, [summary.uid], *args)
        self.letter = None
        self.query_one("#letter", Static).update("")
        await self.load_messages()
        self.status(f"{what}: {summary.subject[:60]}")

    async def action_flag(self) -> None:
        summary = self.current()
        if summary is not None:
            await self._change("flagged" if not summary.flagged else "unflagged",
                               self.client.set_flag, "\\Flagged", not summary.flagged)

    async def action_delete(self) -> None:
        await self._change("deleted", self.client.delete)

    async def action_junk(self) -> None:
        await self._change("marked as spam", self.client.junk, True)

    async def action_not_junk(self) -> None:
        await self._change("marked as not spam", self.client.junk, False)

    async def action_threads(self) -> None:
        if not self.threaded and not await self.call(self.client.can_thread):
            self.status("this server cannot thread (no THREAD=REFERENCES)")
            return
        self.threaded = not self.threaded
        await self.load_messages()

    async def action_refresh(self) -> None:
        await self.load_folders()
        await self.load_messages()

    # -- save, search, move (issue 21) --

    async def action_save(self) -> None:
        """The open message, or the one under the cursor: the whole of it or an attachment."""
        summary = self.current()
        if summary is None:
            return
        letter = self.letter
        if letter is None or letter.uid != summary.uid:
            letter = await self.call(self.client.read, self.folder, summary.uid)
            if letter is None:
                return
        folder = self.save_folder or default_folder()
        self.push_screen(SaveScreen(saveables(letter), folder), self._saved)

    def _saved(self, path: Path | None) -> None:
        self.status(f"saved to {path}" if path is not None else "not saved")

    def action_search(self) -> None:
        self.push_screen(SearchScreen(self.search_query or ""), self._search)

    async def _search(self, query: str | None) -> None:
        if query is None:
            return
        self.search_query = query
        self.letter = None
        self.query_one("#letter", Static).update("")
        await self.load_messages()
        self.refresh_bindings()

    async def action_end_search(self) -> None:
        if self.search_query is None:
            return
        self.search_query = None
        await self.load_messages()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "end_search":  # in the footer only while the list shows found ones
            return self.search_query is not None
        return True

    async def action_move(self) -> None:
        summary = self.current()
        if summary is None:
            return
        folders = await self.call(self.client.folders)
        targets = [f.name for f in folders or [] if f.name != self.folder]
        if not targets:
            self.status("no other folder to move to")
            return

        async def move(target: str | None) -> None:
            if target is not None:
                await self._change(f"moved to {target}", self.client.move, target)

        self.push_screen(FolderPickerScreen(targets, f'"{summary.subject[:40]}"'), move)

    # -- recall (issue 21) --

    async def action_recall(self) -> None:
        """Recalls the message under the cursor (a Sent copy) if it still waits in the
        server's queue; each recipient's outcome goes to the reading pane."""
        summary = self.current()
        if summary is None:
            return
        web = self.web
        if web is None:
            self.status("recall needs mailstead's web address: start with --web-url")
            return
        letter = await self.call(self.client.read, self.folder, summary.uid)
        if letter is None:
            return
        message_id = letter.header("Message-ID").strip()
        if not message_id:
            self.status("this message has no Message-ID: it cannot be matched to the queue")
            return
        self.status("recalling...")
        outcome = await self.call(web.recall, message_id)
        if outcome is None:
            return
        self.letter = None
        self.query_one("#letter", Static).update("\n".join(outcome.lines()))
        self.status(f"recalled: {len(outcome.recalled)} recipient(s) will not get it"
                    + (f", {len(outcome.delivered)} had it already" if outcome.delivered
                       else ""))
