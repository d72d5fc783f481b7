"""``mailstead sieve list|put|get|activate|check USER`` as a subprocess, on a fresh data dir."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_cli import data, err, ok

__all__ = ["data"]  # the fixture, shared with test_cli

SCRIPT = 'require "fileinto";\nif header :contains "subject" "x" { fileinto "X"; }\n'
USER = "demo@example.test"


def test_put_list_get_activate_check_and_errors(data: Path, tmp_path: Path) -> None:
    source = tmp_path / "rules.sieve"
    source.write_text(SCRIPT)
    assert "stored rules for demo@example.test (active)" in ok(
        data, "sieve", "put", USER, "rules", str(source), "--activate")
    ok(data, "sieve", "put", USER, "spare", "-", stdin="keep;\n")
    listed = ok(data, "sieve", "list", USER, "--json")
    assert '"rules"' in listed and '"spare"' in listed and '"yes"' in listed
    assert ok(data, "sieve", "get", USER, "rules") == SCRIPT
    assert ok(data, "sieve", "check", USER) == "rules: syntax OK\n"
    ok(data, "sieve", "activate", USER, "spare")
    assert ok(data, "sieve", "check", USER) == "spare: syntax OK\n"
    ok(data, "sieve", "global", "spam", "-", stdin='require "fileinto"; fileinto "Junk";\n')
    # Errors: one line, non-zero exit.
    line = err(data, "sieve", "put", USER, "bad", "-", stdin='require "nope";\n')
    assert "unsupported extension" in line and "line 1" in line
    assert "the end of the script" in err(data, "sieve", "check", USER, "--file", "-",
                                          stdin="keep;\nif true\n")
    assert "no such user" in err(data, "sieve", "list", "nobody@example.test")
    assert "no script" in err(data, "sieve", "get", USER, "missing")
    assert "no script" in err(data, "sieve", "activate", USER, "missing")
