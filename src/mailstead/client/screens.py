"""The terminal client's small dialogs: saving a message or an attachment to a file, the
search input and the folder picker. Each is a modal screen dismissed with what the user
chose, or None when they pressed Escape."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from mailstead.client.saving import Saveable, free_path, write_file

T = TypeVar("T")


class Dialog(ModalScreen[T]):
    """A box in the middle of the screen; Escape dismisses it with None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    Dialog { align: center middle; }
    Dialog > Vertical { width: 80%; height: auto; max-height: 80%; border: round $accent;
                        padding: 0 1; }
    Dialog OptionList { height: auto; max-height: 16; }
    Dialog Label { width: 100%; }
    """

    def action_cancel(self) -> None:
        self.dismiss(None)


class SaveScreen(Dialog[Path | None]):
    """Pick what to save (the whole message or an attachment), then where: the path starts
    as a free name in ``folder`` and can be edited. A path that exists is overwritten only
    after a second Enter on that same path. Dismissed with the path written."""

    def __init__(self, items: list[Saveable], folder: Path) -> None:
        super().__init__()
        self.items = items
        self.folder = folder
        self.chosen = items[0]
        self._confirm: Path | None = None  # the existing path a second Enter overwrites

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Save which part? (Enter picks, Escape cancels)")
            yield OptionList(*[Option(item.label, id=str(i))
                               for i, item in enumerate(self.items)], id="parts")
            yield Label("Save to (Enter saves):")
            yield Input(str(free_path(self.folder, self.chosen.filename)), id="path")
            yield Label("", id="save-note")

    def on_mount(self) -> None:
        parts = self.query_one("#parts", OptionList)
        parts.highlighted = 0
        if len(self.items) == 1:
            self.query_one("#path", Input).focus()
        else:
            parts.focus()

    def _choose(self, index: int | None) -> None:
        if index is None or self.items[index] is self.chosen:
            return
        self.chosen = self.items[index]
        self.query_one("#path", Input).value = str(free_path(self.folder, self.chosen.filename))
        self._note("")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        self._choose(event.option_index)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()  # not the main screen's folder list
        self._choose(event.option_index)
        self.query_one("#path", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._confirm = None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        typed = event.value.strip()
        if not typed:
            self._note("type where to save it")
            return
        path = Path(typed).expanduser()
        if path.is_dir():
            path = free_path(path, self.chosen.filename)
            self.query_one("#path", Input).value = str(path)
        overwrite = path.exists()
        if overwrite and self._confirm != path:
            self._note(f"{path} exists: Enter again replaces it, or change the name")
            self._confirm = path
            return
        try:
            write_file(path, self.chosen.data, overwrite=overwrite)
        except FileExistsError:  # created since we looked
            self._note(f"{path} exists: Enter again replaces it, or change the name")
            self._confirm = path
            return
        except OSError as exc:
            self._note(f"cannot save: {exc.strerror or exc}")
            return
        self.dismiss(path)

    def _note(self, text: str) -> None:
        self.query_one("#save-note", Label).update(text)


class SearchScreen(Dialog[str | None]):
    """One line of search words; dismissed with what was typed."""

    def __init__(self, query: str = "") -> None:
        super().__init__()
        self.query_text = query

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Search this folder (Enter searches, Escape cancels)")
            yield Input(self.query_text, id="query",
                        placeholder="words; from: to: cc: subject: body: is:unread|flagged")

    def on_mount(self) -> None:
        self.query_one("#query", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)


class FolderPickerScreen(Dialog[str | None]):
    """The folders to move a message to; dismissed with the one picked."""

    def __init__(self, folders: list[str], what: str) -> None:
        super().__init__()
        self.folders = folders
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Move {self.what} to (Enter moves, Escape cancels)")
            yield OptionList(*[Option(name, id=name) for name in self.folders], id="targets")

    def on_mount(self) -> None:
        targets = self.query_one("#targets", OptionList)
        targets.highlighted = 0
        targets.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()  # not the main screen's folder list
        self.dismiss(self.folders[event.option_index])
